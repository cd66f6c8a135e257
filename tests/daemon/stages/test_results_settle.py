"""One report per study (daemon.stages.results): the settle rule, the replacement that supersedes a
report when more images arrive, and the images listed as not analysed. A real SQLite database
migrated to head and the real report builder; only the network send is replaced by a recorder."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cxrmodel.labels import LABELS
from daemon.stages import results as stage
from storage import db
from storage.models import AuditEvent, Instance, Result, SentReport, utcnow

DX = "1.2.840.10008.5.1.4.1.1.1.1"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
STUDY = "2.25.10"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize("first, last, queued, now, expected", [
    (0, 0, False, 10, 20),     # quiet period not over: wait for it
    (0, 25, False, 30, 25),    # a new image restarts the quiet period
    (0, 0, False, 30, 0),      # quiet, nothing queued: send
    (0, 0, True, 30, stage.INFERENCE_POLL_S),  # quiet but an image awaits inference: look again soon
    (0, 590, False, 595, 5),   # the maximum wait caps the quiet period
    (0, 599, True, 600, 0),    # past the maximum: send what there is
])
def test_settle_wait(first, last, queued, now, expected):  # noqa: ANN001
    assert stage.settle_wait_s(at(first), at(last), queued, at(now), quiet_s=30, max_s=600) == pytest.approx(expected)


@pytest.fixture()
def env(tmp_path: Path):  # noqa: ANN201
    from cxrmodel.registry import Registry
    from storage import keys as key_store
    from storage.vault import Vault

    engine = db.engine_from_url(f"sqlite:///{tmp_path / 'cxrd.db'}")
    db.migrate(engine)
    sessions = db.sessions(engine)
    key_store.init_keys(tmp_path / "master.key", tmp_path / "keyring.json")
    keys = key_store.load_keys(tmp_path / "master.key", tmp_path / "keyring.json")
    sent: list = []

    def sender(quiet_s: float = 0.0, max_s: float = 600.0) -> stage.ResultsSender:
        return stage.ResultsSender(
            sessions=sessions, vault=Vault(tmp_path / "vault", keys.keyring), keys=keys,
            registry=Registry(tmp_path / "models"), settle_quiet_s=quiet_s, settle_max_s=max_s,
            destination=stage.Destination(calling_aet="CXRD", called_aet="PACS", host="127.0.0.1", port=9),
            sender=lambda objects, dest: sent.append(objects))
    yield sessions, keys, sender, sent
    engine.dispose()


def add_image(sessions, keys, sop: str, *, state: str = "predicted", view: str = "frontal",  # noqa: ANN001
              reason: str = "", received_at: datetime | None = None, schedule: bool = True,
              version: str = "v1") -> int:
    """An instance as ingest and the worker leave it: re-identification entry, signed predictions
    when predicted, and the study's result row scheduled."""
    from storage import records, reid
    from storage.models import Prediction, ReidEntry

    with sessions.begin() as s:
        inst = Instance(sop_instance_uid=sop, study_uid=STUDY, series_uid="2.25.12", sop_class_uid=DX, state=state,
                        view=view, analysis_reason=reason, received_at=received_at or utcnow())
        s.add(inst)
        s.flush()
        s.add(ReidEntry(sop_instance_uid=sop, study_uid=STUDY, sealed=reid.seal_reid(
            keys.reid_key, sop, {"study_uid": "1.2.3", "sop_instance_uid": "1.2.3.4." + sop[-2:],
                                 "series_uid": "1.2.3.5", "patient_id": "P1"})))
        if state == "predicted":
            s.add_all(Prediction(instance_id=inst.id, model_version=version, label=label, probability=0.3,
                                 threshold=0.5, positive=False,
                                 mac=records.mac(keys.record_key, sop, version, label, 0.3, 0.5, False))
                      for label in LABELS)
        if schedule:
            stage.schedule_result(s, STUDY, version)
        return inst.id


def comments(sr) -> list[str]:  # noqa: ANN001
    [qual] = [i for i in sr.ContentSequence if i.ValueType == "CONTAINER"
              and i.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"]
    return [i.TextValue for i in qual.ContentSequence if i.ValueType == "TEXT"]


def evidence_uids(sr) -> set[str]:  # noqa: ANN001
    return {r.ReferencedSOPInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
            for s in e.ReferencedSeriesSequence for r in s.ReferencedSOPSequence}


def test_a_study_is_held_until_quiet_then_sent_once_with_every_image(env):  # noqa: ANN001
    sessions, keys, sender, sent = env
    add_image(sessions, keys, "2.25.11")
    add_image(sessions, keys, "2.25.21", state="not_analysed", view="lateral",
              reason="ViewPosition says lateral (LL)")
    waiting = sender(quiet_s=30)
    assert waiting.run_once() is True and sent == []  # claimed, found unsettled, put back
    with sessions() as s:
        row = s.query(Result).one()
        assert row.state == "pending" and row.attempts == 0 and row.next_attempt_at > utcnow() + timedelta(seconds=25)
    assert waiting.run_once() is False  # not due before the quiet period ends
    # Settings are read at start: a sender started with a shorter quiet period sends the same row.
    with sessions.begin() as s:
        s.query(Result).update({Result.next_attempt_at: utcnow()})
    assert sender(quiet_s=0).run_once() is True
    [[sr]] = sent
    assert evidence_uids(sr) == {"1.2.3.4.11"}  # only the analysed image is evidence of the findings
    notes = comments(sr)
    assert any(n.startswith("Not analysed (lateral view): ViewPosition says lateral (LL)") and "1.2.3.4.21" in n
               for n in notes)
    assert not any("replaces" in n for n in notes) and "PredecessorDocumentsSequence" not in sr
    with sessions() as s:
        assert {i.sop_instance_uid: i.reported_at is not None for i in s.query(Instance)} == {
            "2.25.11": True, "2.25.21": True}
        assert [(r.analysed, r.not_analysed, r.superseded_by) for r in s.query(SentReport)] == [(1, 1, None)]


def test_a_study_waits_for_its_images_queued_for_inference_up_to_the_maximum(env):  # noqa: ANN001
    sessions, keys, sender, sent = env
    add_image(sessions, keys, "2.25.11", received_at=utcnow() - timedelta(seconds=60))
    add_image(sessions, keys, "2.25.21", state="received", received_at=utcnow() - timedelta(seconds=60),
              schedule=False)
    assert sender(quiet_s=1, max_s=600).run_once() is True and sent == []
    with sessions.begin() as s:
        s.query(Result).update({Result.next_attempt_at: utcnow()})
    assert sender(quiet_s=1, max_s=30).run_once() is True  # past the maximum: sent with what is predicted
    [[sr]] = sent
    assert evidence_uids(sr) == {"1.2.3.4.11"}


def test_more_images_after_a_report_bring_one_replacement_that_names_it(env):  # noqa: ANN001
    sessions, keys, sender, sent = env
    add_image(sessions, keys, "2.25.11")
    assert sender().run_once() is True
    add_image(sessions, keys, "2.25.31")
    assert sender().run_once() is True
    first, second = sent[0][0], sent[1][0]
    assert first.SOPInstanceUID != second.SOPInstanceUID
    [pred] = second.PredecessorDocumentsSequence
    ref = pred.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == first.SeriesInstanceUID
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert any(f"replaces the earlier AI report {first.SOPInstanceUID}" in n for n in comments(second))
    assert evidence_uids(second) == {"1.2.3.4.11", "1.2.3.4.31"}
    with sessions() as s:
        reports = s.query(SentReport).order_by(SentReport.id).all()
        assert [(r.sop_instance_uid, r.superseded_by) for r in reports] == [
            (str(first.SOPInstanceUID), reports[1].id), (str(second.SOPInstanceUID), None)]
        details = [e.details for e in s.query(AuditEvent).filter(AuditEvent.event_type == "result.sent")
                   .order_by(AuditEvent.seq)]
    assert json.loads(details[1])["replaces"] == reports[0].id and "replaces" not in json.loads(details[0])
    assert sender().run_once() is False  # one report per study: nothing more to send


def test_a_study_with_no_frontal_image_gets_a_report_saying_so(env):  # noqa: ANN001
    sessions, keys, sender, sent = env
    add_image(sessions, keys, "2.25.21", state="not_analysed", view="lateral", reason="ViewPosition says lateral",
              schedule=False)
    with sessions.begin() as s:  # as the sweep would under the current model
        stage.schedule_result(s, STUDY, "v1")
    assert sender().run_once() is True
    [[sr]] = sent
    notes = comments(sr)
    assert notes[0].startswith("No finding is reported: no image of this study was analysed")
    assert evidence_uids(sr) == {"1.2.3.4.21"}
    codes = [i for i in sr.ContentSequence if i.ValueType == "CONTAINER"
             and i.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"][0].ContentSequence
    assert not [i for i in codes if i.ValueType == "CODE"]  # no finding calls at all


def test_the_sweep_queues_a_study_of_not_analysed_images_once(env, tmp_path: Path):  # noqa: ANN001
    from cxrmodel.network import build_model
    from cxrmodel.registry import Registry

    sessions, keys, sender, sent = env
    version = Registry(tmp_path / "models").add(build_model(seed=0), promote=True)
    add_image(sessions, keys, "2.25.21", state="not_analysed", view="lateral", reason="lateral", schedule=False)
    s1 = sender()
    assert s1.sweep() == 1 and s1.sweep() == 0  # queued once, not again while pending
    with sessions() as s:
        assert [(r.study_uid, r.model_version, r.state) for r in s.query(Result)] == [(STUDY, str(version), "pending")]


def test_an_image_another_model_predicted_does_not_bring_this_models_report_back(env):  # noqa: ANN001
    """A promotion between two images of a study: each model's row reports its own images once."""
    sessions, keys, sender, sent = env
    add_image(sessions, keys, "2.25.11")
    add_image(sessions, keys, "2.25.31", version="v2", schedule=False)
    assert sender().run_once() is True
    with sessions() as s:
        assert [(r.model_version, r.state) for r in s.query(Result)] == [("v1", "sent")]
    assert sender().run_once() is False and len(sent) == 1


def test_a_lateral_arriving_after_the_report_brings_a_replacement_listing_it(env):  # noqa: ANN001
    sessions, keys, sender, sent = env
    add_image(sessions, keys, "2.25.11")
    assert sender().run_once() is True
    add_image(sessions, keys, "2.25.21", state="not_analysed", view="lateral", reason="ViewPosition says lateral",
              schedule=False)  # ingest queues nothing for it: the sweep finds it
    assert sender().run_once() is True
    first, second = sent[0][0], sent[1][0]
    assert second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert any(n.startswith("Not analysed (lateral view)") for n in comments(second))
    assert evidence_uids(second) == {"1.2.3.4.11"}
    assert sender().run_once() is False
