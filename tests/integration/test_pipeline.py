"""Ingest -> worker -> predictions inside one `cxrd serve`, with real pushes and a real (randomly
initialised, seeded) DenseNet121: jobs wait without a model, are processed exactly once, survive restarts."""
from __future__ import annotations

import json
import signal
import time

from sqlalchemy import create_engine, func, select

from conftest import copy_with_new_uids, storescu
from cxrmodel.network import build_model
from cxrmodel.registry import Registry
from storage.models import AuditEvent, Instance, Job, Prediction

SRC = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"
FAST = {"CXRD_MODEL__BACKEND": "fp32", "CXRD_MODEL__MAX_BATCH_WAIT_MS": "10"}


def install_model(state_dir, promote: bool = True) -> str:  # noqa: ANN001
    return Registry(state_dir / "models").add(build_model(seed=0), promote=promote)


def wait_for(predicate, timeout: float = 120.0, every: float = 0.25) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


def counts(state_dir) -> dict[str, int]:  # noqa: ANN001
    engine = create_engine(f"sqlite:///{state_dir / 'cxrd.db'}")
    with engine.connect() as c:
        out = dict(c.execute(select(Instance.state, func.count()).group_by(Instance.state)).all())
        out["predictions"] = c.execute(select(func.count()).select_from(Prediction)).scalar()
        out["jobs_done"] = c.execute(select(func.count()).select_from(Job).where(Job.state == "done")).scalar()
    engine.dispose()
    return out


def test_jobs_wait_without_a_model_and_are_predicted_once_after_promotion(daemon_factory, shared_data, tmp_path):
    d = daemon_factory(FAST).start()
    files = copy_with_new_uids(shared_data / SRC, tmp_path / "a", 4)
    assert storescu(d.dicom_port, *files)[1] == ["Success"] * 4
    time.sleep(2)
    assert counts(d.state_dir).get("received") == 4 and counts(d.state_dir)["predictions"] == 0
    status = json.loads(d.cli("status", "--format", "json").stdout)
    assert status["model"] is None and status["queue_depth"] == 4
    version = install_model(d.state_dir)
    wait_for(lambda: counts(d.state_dir).get("predicted") == 4)
    c = counts(d.state_dir)
    assert c["predictions"] == 4 * 14 and c["jobs_done"] == 4
    # A restart replays nothing: still exactly 14 predictions per instance.
    assert d.stop() == 0
    d.start()
    time.sleep(2)
    assert counts(d.state_dir)["predictions"] == 4 * 14
    engine = create_engine(f"sqlite:///{d.state_dir / 'cxrd.db'}")
    with engine.connect() as conn:
        models = set(conn.execute(select(Prediction.model_version)).scalars())
        audited = conn.execute(select(func.count()).select_from(AuditEvent)
                               .where(AuditEvent.event_type == "prediction.created")).scalar()
    assert models == {version} and audited == 4


def test_kill9_during_inference_resumes_and_predicts_each_instance_exactly_once(daemon_factory, shared_data,
                                                                                tmp_path):
    d = daemon_factory({**FAST, "CXRD_MODEL__BATCH_SIZE": "2"})
    d.state_dir.mkdir(parents=True)
    d.cli("init", check=True)
    install_model(d.state_dir)
    d.start()
    files = copy_with_new_uids(shared_data / SRC, tmp_path / "k", 12)
    assert storescu(d.dicom_port, *files)[1] == ["Success"] * 12
    wait_for(lambda: counts(d.state_dir)["predictions"] > 0, every=0.05)
    d.stop(signal.SIGKILL)
    d.start()
    wait_for(lambda: counts(d.state_dir).get("predicted") == 12)
    c = counts(d.state_dir)
    assert c["predictions"] == 12 * 14 and c["jobs_done"] == 12


def test_a_swapped_vault_pointer_is_quarantined_not_classified(daemon_factory, shared_data, tmp_path):
    """Someone with database access points instance A at instance B's object (both real, both
    decrypt): the worker reads the object's own SOP Instance UID, refuses both, audits the tampering,
    and writes no prediction that could reach either patient's record; the untouched one is predicted
    (and every written prediction row carries its MAC)."""
    from sqlalchemy import text
    d = daemon_factory(FAST).start()
    files = copy_with_new_uids(shared_data / SRC, tmp_path / "s", 3)
    assert storescu(d.dicom_port, *files)[1] == ["Success"] * 3
    time.sleep(1)
    engine = create_engine(f"sqlite:///{d.state_dir / 'cxrd.db'}")
    with engine.begin() as c:
        (a, obj_a), (b, obj_b) = c.execute(text("SELECT id, vault_object FROM instances ORDER BY id LIMIT 2")).all()
        c.execute(text("UPDATE instances SET vault_object = :o WHERE id = :i"), {"o": obj_b, "i": a})
        c.execute(text("UPDATE instances SET vault_object = :o WHERE id = :i"), {"o": obj_a, "i": b})
    install_model(d.state_dir)
    wait_for(lambda: counts(d.state_dir).get("quarantined") == 2 and counts(d.state_dir).get("predicted") == 1)
    with engine.connect() as c:
        tampered = c.execute(select(func.count()).select_from(AuditEvent)
                             .where(AuditEvent.event_type == "security.tamper")).scalar()
        predicted_for = set(c.execute(select(Prediction.instance_id)).scalars())
        macs = set(c.execute(select(func.length(Prediction.mac))).scalars())
    assert tampered == 2 and predicted_for.isdisjoint({a, b}) and macs == {64}
    with engine.connect() as c:
        swapped = set(c.execute(text("SELECT sop_instance_uid FROM instances WHERE id IN (:a, :b)"),
                                {"a": a, "b": b}).scalars())
        classes = {json.loads(row)["class"] for row in c.execute(text(
            "SELECT details FROM audit_events WHERE event_type = 'security.tamper'")).scalars()}
    engine.dispose()
    assert classes == {"TamperError"}
    assert d.stop() == 0
    # The journal names each failed instance (by its pseudonym), what kind of failure and what follows.
    failed = [line for line in d.log_text().splitlines() if "event=worker.failed" in line]
    assert len(failed) == 2, failed
    assert {next(f[len("instance="):] for f in line.split() if f.startswith("instance=")) for line in failed} == swapped
    assert all("reason_class=TamperError" in line and "then=quarantined" in line and "level=error" in line
               for line in failed)
    log = d.log_text()
    assert "event=worker.model_loading" in log and "event=worker.model_loaded" in log
