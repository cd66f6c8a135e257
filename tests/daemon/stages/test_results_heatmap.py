"""Heatmaps across a study's reports (daemon.stages.results): a replacement report whose top finding
is still on the same image re-sends the same heatmap instances (same UIDs: the PACS keeps one copy),
one whose top finding moved to another image sends new ones, and every report names the heatmap
objects that go with it. A real SQLite database, vault, model (Grad-CAM runs) and report builders
on a real radiograph from ../shared/data; only the network send is replaced by a recorder."""
from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from cxrmodel.labels import LABELS
from daemon.dicom import result_objects as report
from daemon.stages import results as stage
from storage import db
from storage.models import utcnow

DX = "1.2.840.10008.5.1.4.1.1.1.1"
STUDY = "2.25.10"


@pytest.fixture()
def env(tmp_path: Path, shared_data: Path):  # noqa: ANN201
    from cxrmodel.network import build_model
    from cxrmodel.registry import Registry
    from storage import keys as key_store
    from storage.vault import Vault

    engine = db.engine_from_url(f"sqlite:///{tmp_path / 'cxrd.db'}")
    db.migrate(engine)
    sessions = db.sessions(engine)
    key_store.init_keys(tmp_path / "master.key", tmp_path / "keyring.json")
    keys = key_store.load_keys(tmp_path / "master.key", tmp_path / "keyring.json")
    registry = Registry(tmp_path / "models")
    version = str(registry.add(build_model(seed=0), promote=True))
    vault = Vault(tmp_path / "vault", keys.keyring)
    film = (shared_data / "dicom" / "derived" / "nih_00000001_000_explicit-vr-le.dcm").read_bytes()
    sent: list = []
    sender = stage.ResultsSender(
        sessions=sessions, vault=vault, keys=keys, registry=registry, send_heatmap=True,
        heatmap_objects=("secondary_capture", "segmentation"),
        destination=stage.Destination(calling_aet="CXRD", called_aet="PACS", host="127.0.0.1", port=9),
        sender=lambda objects, dest: sent.append(objects))
    yield sessions, keys, vault, film, version, sender, sent
    engine.dispose()


def add_image(env, sop: str, effusion: float) -> None:  # noqa: ANN001
    """A predicted frontal image as ingest and the worker leave it: the pseudonymised object in the
    vault, its re-identification entry, signed predictions (Effusion at `effusion`, the rest 0.3)."""
    from storage import records, reid
    from storage.models import Instance, Prediction, ReidEntry

    sessions, keys, vault, film, version, _, _ = env
    ds = pydicom.dcmread(BytesIO(film))
    ds.SOPInstanceUID, ds.StudyInstanceUID = sop, STUDY
    buf = BytesIO()
    ds.save_as(buf)
    vault.put(sop, buf.getvalue())
    with sessions.begin() as s:
        inst = Instance(sop_instance_uid=sop, study_uid=STUDY, series_uid="2.25.12", sop_class_uid=DX,
                        state="predicted", view="frontal", vault_object=sop, received_at=utcnow())
        s.add(inst)
        s.flush()
        s.add(ReidEntry(sop_instance_uid=sop, study_uid=STUDY, sealed=reid.seal_reid(
            keys.reid_key, sop, {"study_uid": "1.2.3", "sop_instance_uid": "1.2.3.4." + sop[-2:],
                                 "series_uid": "1.2.3.5", "patient_id": "P1"})))
        for label in LABELS:
            p = effusion if label == "Effusion" else 0.3
            s.add(Prediction(instance_id=inst.id, model_version=version, label=label, probability=p, threshold=0.5,
                             positive=p >= 0.5, mac=records.mac(keys.record_key, sop, version, label, p, 0.5, p >= 0.5)))
        stage.schedule_result(s, STUDY, version)


def heatmap_note(sr) -> str:  # noqa: ANN001
    [qual] = [i for i in sr.ContentSequence if i.ValueType == "CONTAINER"
              and i.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"]
    [note] = [i.TextValue for i in qual.ContentSequence if i.ValueType == "TEXT" and "AI heatmap" in i.TextValue]
    return note


def test_a_replacement_resends_an_unchanged_heatmap_under_its_uids_and_names_a_new_one(env):  # noqa: ANN001
    *_, sender, sent = env
    add_image(env, "2.25.11", effusion=0.8)
    assert sender.run_once() is True
    [(sr1, sc1, seg1)] = sent
    assert (report.read_kind(sc1), report.read_kind(seg1)) == ("heatmap", "heatmap_map")
    assert sc1.SourceImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.11"
    note = heatmap_note(sr1)
    assert note.startswith("Current AI heatmap of this study: Grad-CAM of Effusion on image 1.2.3.4.11")
    assert f"Secondary Capture {sc1.SOPInstanceUID}" in note and f"Segmentation {seg1.SOPInstanceUID}" in note
    assert "out of date" not in note  # the first report has nothing to supersede

    # A second frontal image with a lower Effusion: the top finding is still on the first image.
    add_image(env, "2.25.21", effusion=0.6)
    assert sender.run_once() is True
    sr2, sc2, seg2 = sent[1]
    assert sr2.SOPInstanceUID != sr1.SOPInstanceUID  # the report is a replacement ...
    assert (sc2.SOPInstanceUID, seg2.SOPInstanceUID) == (sc1.SOPInstanceUID, seg1.SOPInstanceUID)  # ... not the maps
    assert (sc2.SeriesInstanceUID, seg2.SeriesInstanceUID) == (sc1.SeriesInstanceUID, seg1.SeriesInstanceUID)
    assert f"Secondary Capture {sc1.SOPInstanceUID}" in heatmap_note(sr2)

    # A third one where Effusion is highest: new heatmap instances of it, named as current.
    add_image(env, "2.25.31", effusion=0.9)
    assert sender.run_once() is True
    sr3, sc3, seg3 = sent[2]
    assert sc3.SourceImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.31"
    assert sc3.SOPInstanceUID != sc1.SOPInstanceUID and seg3.SOPInstanceUID != seg1.SOPInstanceUID
    assert sc3.SeriesInstanceUID == sc1.SeriesInstanceUID  # same heatmap series of the study
    note = heatmap_note(sr3)
    assert "on image 1.2.3.4.31" in note and f"Secondary Capture {sc3.SOPInstanceUID}" in note
    assert str(sc1.SOPInstanceUID) not in note
    assert note.endswith("Heatmaps sent with earlier reports of this study and not named here are out of date.")
    for sr in (sr1, sr2, sr3):  # what the SR names passes the same pre-send checks as before
        stage.ResultsSender._check([sr])


def test_heatmap_uids_depend_on_the_image_and_finding_only():
    a = report.heatmap_uids("2.25.10", "v1", "heatmap", "2.25.11", "Effusion")
    assert a == report.heatmap_uids("2.25.10", "v1", "heatmap", "2.25.11", "Effusion")
    assert a[1] != report.heatmap_uids("2.25.10", "v1", "heatmap", "2.25.21", "Effusion")[1]
    assert a[1] != report.heatmap_uids("2.25.10", "v1", "heatmap", "2.25.11", "Mass")[1]
    assert a[1] != report.heatmap_uids("2.25.10", "v2", "heatmap", "2.25.11", "Effusion")[1]
    assert a[1] != report.heatmap_uids("2.25.10", "v1", "heatmap_map", "2.25.11", "Effusion")[1]
    assert a[0] == report.report_uids("2.25.10", "v1", "heatmap", [])[0]  # the study's heatmap series as before
