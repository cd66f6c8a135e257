"""The worker with a shadow candidate: the same batch through both models, the shadow's output stored
apart and never scheduled for sending; a broken shadow never stops the current model; with no shadow
the worker does one stat per claim and nothing else."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from cxrmodel.network import build_model
from cxrmodel.preprocess import PreprocessSpec, preprocess
from cxrmodel.registry import Registry
from daemon.stages import shadow as shadow_stage
from daemon.stages.worker import EngineSettings, Prepared, Worker
from storage import db
from storage import keys as key_store
from storage import shadow as shadow_rows
from storage.models import AuditEvent, Instance, Job, Prediction, Result, ShadowPrediction

torch.set_num_threads(1)
SPEC = PreprocessSpec(size=64)  # real films, small input: these tests are about plumbing, not accuracy


@pytest.fixture()
def rig(tmp_path: Path, engine, shared_data: Path):
    key_store.init_keys(tmp_path / "master.key", tmp_path / "keys" / "keyring.json")
    keys = key_store.load_keys(tmp_path / "master.key", tmp_path / "keys" / "keyring.json")
    sessions = db.sessions(engine)
    reg = Registry(tmp_path / "models")
    reg.add(build_model(seed=0), version="cur", promote=True, preprocessing=SPEC)
    reg.add(build_model(seed=1), version="cand", preprocessing=SPEC)
    w = Worker(sessions=sessions, vault=None, keys=keys, registry=reg,  # type: ignore[arg-type]
               engine_settings=EngineSettings(backend="fp32", threads=1, batch_size=4), results_enabled=True)
    pngs = sorted((shared_data / "nih" / "images").glob("*.png"))[:4]
    with sessions() as s, s.begin():
        for i, png in enumerate(pngs):
            s.add(Instance(id=i + 1, sop_instance_uid=f"2.25.{1000 + i}", study_uid=f"2.25.{9000 + i // 2}",
                           series_uid="2.25.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.7", state="received"))
            s.add(Job(id=i + 1, instance_id=i + 1, state="running"))
    tensors = [preprocess(png, SPEC) for png in pngs]
    yield w, reg, sessions, keys, tensors
    w.shadow.close()


def run_batch(w: Worker, tensors: list[torch.Tensor]) -> None:
    """One claim of four images through the infer and record threads' loops, run to completion here."""
    model = w.current_model()
    w.shadow.refresh()
    if w.shadow._loading is not None:
        w.shadow._loading.join(60)
    claim = [Prepared(i + 1, i + 1, f"2.25.{1000 + i}", f"2.25.{9000 + i // 2}", t, version=model.version)
             for i, t in enumerate(tensors)]
    w.batches.ready.put(claim)
    w._stop.set()  # the loops drain what is queued and return (no prepare thread is running)
    w._infer_loop()
    w._record_loop()


def rows(sessions, stmt):  # noqa: ANN001, ANN201
    with sessions() as s:
        return s.execute(stmt).all()


def test_the_shadow_scores_the_same_batch_and_its_rows_never_reach_results(rig):
    w, reg, sessions, keys, tensors = rig
    reg.set_shadow("cand")
    run_batch(w, tensors)
    assert {v for (v,) in rows(sessions, select(Prediction.model_version))} == {"cur"}
    assert len(rows(sessions, select(Prediction.id))) == 4 * 14
    shadow = rows(sessions, select(ShadowPrediction.instance_id, ShadowPrediction.model_version,
                                   ShadowPrediction.current_version, ShadowPrediction.probabilities))
    assert sorted(r[0] for r in shadow) == [1, 2, 3, 4]
    assert {(r[1], r[2]) for r in shadow} == {("cand", "cur")}
    # what the candidate itself says about these very tensors, row for row
    expected = reg.load("cand").predict(torch.stack(tensors))
    got = {r[0]: json.loads(r[3]) for r in shadow}
    assert got[1]["Effusion"] == pytest.approx(float(expected[0][2]), abs=1e-5)
    # only the current model's report is scheduled; nothing for the shadow
    assert {(st, v) for st, v in rows(sessions, select(Result.study_uid, Result.model_version))} == \
        {("2.25.9000", "cur"), ("2.25.9001", "cur")}
    # each row is authentic (HMAC), and the comparison reader pairs all four with the current model
    with sessions() as s:
        paired = shadow_rows.paired(s, keys.record_key, "cand", "cur")
    assert paired.instance_ids == [1, 2, 3, 4] and paired.rejected == 0
    # a replayed batch (crash before the jobs were marked done) writes nothing twice
    w._stop.clear()
    run_batch(w, tensors)
    assert len(rows(sessions, select(ShadowPrediction.id))) == 4


def test_with_no_shadow_the_worker_only_stats_the_pointer(rig, monkeypatch):
    w, reg, sessions, keys, tensors = rig
    monkeypatch.setattr(shadow_stage, "read_shadow", lambda *_: pytest.fail("pointer read with nothing changed"))
    run_batch(w, tensors)
    w.shadow.refresh()
    assert w.shadow._loading is None and w.shadow.version is None
    assert rows(sessions, select(ShadowPrediction.id)) == []
    assert len(rows(sessions, select(Prediction.id))) == 4 * 14


def test_shadow_weights_that_fail_verification_turn_the_shadow_off_not_the_worker(rig, caplog):
    w, reg, sessions, keys, tensors = rig
    reg.set_shadow("cand")
    weights = reg.root / "cand" / reg.manifest("cand").weights_file
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated on disk
    with caplog.at_level(logging.INFO, logger="cxrd.shadow"):
        run_batch(w, tensors)
    assert len(rows(sessions, select(Prediction.id))) == 4 * 14 and rows(sessions, select(ShadowPrediction.id)) == []
    pointer = reg.shadow()
    assert pointer["version"] is None and pointer["origin"].startswith("disabled: cannot load")
    [(outcome, details)] = rows(sessions, select(AuditEvent.outcome, AuditEvent.details)
                                .where(AuditEvent.event_type == "model.shadow.disabled"))
    assert outcome == 8 and json.loads(details)["version"] == "cand"
    assert [r.message for r in caplog.records].count("shadow.disabled") == 1


def test_a_shadow_that_fails_at_inference_is_turned_off_and_the_current_rows_stand(rig):
    w, reg, sessions, keys, tensors = rig
    reg.set_shadow("cand")
    w.current_model()
    w.shadow.refresh()
    w.shadow._loading.join(60)
    engine = w.shadow._active[1]
    engine.predict = lambda batch: (_ for _ in ()).throw(RuntimeError("out of memory"))  # type: ignore[method-assign]
    run_batch(w, tensors)
    assert len(rows(sessions, select(Prediction.id))) == 4 * 14
    assert {v for (v,) in rows(sessions, select(Result.model_version))} == {"cur"}
    assert rows(sessions, select(ShadowPrediction.id)) == [] and reg.shadow()["version"] is None
    reasons = [json.loads(d)["reason"] for (d,) in rows(sessions, select(AuditEvent.details).where(
        AuditEvent.event_type == "model.shadow.disabled"))]
    assert reasons == ["inference failed (RuntimeError)"]


def test_a_shadow_that_cannot_share_the_current_models_tensors_is_skipped(rig, caplog):
    w, reg, sessions, keys, tensors = rig
    reg.add(build_model(seed=2), version="big", preprocessing=PreprocessSpec(size=96))
    reg.set_shadow("big")  # the CLI refuses this; the current model can also change under a shadow
    with caplog.at_level(logging.INFO, logger="cxrd.shadow"):
        run_batch(w, tensors)
    assert rows(sessions, select(ShadowPrediction.id)) == [] and reg.shadow()["version"] == "big"
    assert len(rows(sessions, select(Prediction.id))) == 4 * 14
    assert [r.message for r in caplog.records].count("shadow.skipped") == 1


def test_a_shadow_that_becomes_current_stops_being_the_shadow(tmp_path):
    reg = Registry(tmp_path / "models")
    reg.add(build_model(seed=0), version="a", promote=True, preprocessing=SPEC)
    reg.add(build_model(seed=1), version="b", preprocessing=SPEC)
    with pytest.raises(Exception, match="current model"):
        reg.set_shadow("a")
    assert reg.set_shadow("b") is None and reg.shadow()["version"] == "b"
    reg.promote("b")
    assert reg.shadow()["version"] is None
    reg.set_shadow("a")
    reg.rollback()  # back to a: a is current again, so no longer the shadow
    assert reg.current_version() == "a" and reg.shadow()["version"] is None
    events = [e["event"] for e in reg.history()]
    assert events.count("shadow") == 2 and events.count("shadow-off") == 2
