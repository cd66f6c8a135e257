"""Results back to the PACS with real peers: Orthanc pushes a chest DICOM to `cxrd serve`, the SR, the
Grad-CAM Secondary Capture and (when set) the heatmap Segmentation come back into the ORIGINAL study;
a destination that is down parks the result as failed after a capped number of attempts, and
`cxrd results retry` sends it once it is back."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from conftest import copy_with_new_uids, dcmtk, state_rows, storescu
from cxrmodel.labels import LABELS
from cxrmodel.network import build_model
from cxrmodel.registry import Registry
from storage.models import AuditEvent, Instance, Result, SentReport

SRC = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"
MARKERS = {"PatientID": "CXRDPID4711", "PatientName": "ZEBRA^QUINCY", "AccessionNumber": "ACCX9931"}


def wait_for(predicate, timeout: float = 90.0, every: float = 0.25):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


def results_env(orthanc, **extra: str) -> dict[str, str]:  # noqa: ANN001
    return {"CXRD_MODEL__BACKEND": "fp32", "CXRD_MODEL__MAX_BATCH_WAIT_MS": "10",
            "CXRD_RESULTS__ENABLED": "true", "CXRD_RESULTS__HOST": "127.0.0.1",
            "CXRD_RESULTS__PORT": str(orthanc.dicom_port), "CXRD_RESULTS__AE_TITLE": orthanc.aet,
            "CXRD_RESULTS__SETTLE_QUIET_S": "0.5", **extra}


def started_daemon(daemon_factory, env: dict[str, str]):  # noqa: ANN001, ANN201
    d = daemon_factory(env)
    d.state_dir.mkdir(parents=True)
    d.cli("init", check=True)
    Registry(d.state_dir / "models").add(build_model(seed=0), promote=True)
    return d.start()


@pytest.mark.slow
def test_sr_and_heatmap_land_in_the_original_study_in_orthanc(orthanc, daemon_factory, shared_data, tmp_path):
    d = started_daemon(daemon_factory, results_env(orthanc, CXRD_RESULTS__SEND_HEATMAP="true"))
    orthanc.add_modality("cxrd", "CXRD", d.dicom_port)
    [src] = copy_with_new_uids(shared_data / SRC, tmp_path / "in", 1, markers=MARKERS)
    original = pydicom.dcmread(src, stop_before_pixels=True)
    uploaded = orthanc.upload(src)
    t0 = time.monotonic()
    orthanc.push("cxrd", [uploaded["ID"]])

    def back_in_orthanc() -> list[dict]:
        insts = orthanc.study_instances(original.StudyInstanceUID)
        return insts if {i.get("Modality") for i in insts} >= {"SR", "OT"} else []
    instances = wait_for(back_in_orthanc)
    took = time.monotonic() - t0
    assert len(orthanc.get("/studies")) == 1, "results must join the original study, not open a new one"
    by_modality = {i["Modality"]: i for i in instances}
    sr_tags, sc_tags = by_modality["SR"], by_modality["OT"]
    for tags in (sr_tags, sc_tags):
        assert tags["StudyInstanceUID"] == original.StudyInstanceUID
        assert tags["PatientID"] == MARKERS["PatientID"]
        assert tags["AccessionNumber"] == MARKERS["AccessionNumber"]
        assert tags["SeriesInstanceUID"] != original.SeriesInstanceUID
        assert tags["SOPInstanceUID"] != original.SOPInstanceUID

    sr_file = tmp_path / "sr.dcm"
    sr_file.write_bytes(orthanc.get(f"/instances/{sr_tags['ID']}/file", raw=True))
    dump = dcmtk("dsrdump", "-v", "+Pl", str(sr_file))
    assert dump.returncode == 0 and "Error" not in dump.stderr and "Warning" not in dump.stderr, dump.stderr
    assert dump.stdout.count('"Finding")=') == len(LABELS)  # one TID 1501 group per finding
    assert "Not for diagnostic use without physician review" in dump.stdout
    sr = pydicom.dcmread(sr_file)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"  # IHE AIR: TID 1500 root
    [ours] = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "cxrd"]
    assert ours.DeviceUID and ours.SoftwareVersions == sr.SoftwareVersions
    simplified = orthanc.get(f"/instances/{sr_tags['ID']}/simplified-tags")  # what a PACS's own tools read
    assert simplified["ContentTemplateSequence"][0]["TemplateIdentifier"] == "1500"
    assert simplified["ConceptNameCodeSequence"][0]["CodeMeaning"] == "Imaging Measurement Report"
    assert sr.PatientName == MARKERS["PatientName"]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == original.StudyInstanceUID
    ref = evidence.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == original.SeriesInstanceUID
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    sc = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{sc_tags['ID']}/file", raw=True)))
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.ndim == 3
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    # the source said nothing about burned-in text, so neither does the SC that copies its pixels
    assert "BurnedInAnnotation" not in original and "BurnedInAnnotation" not in sc

    assert [r[0] for r in state_rows(d.state_dir, select(Instance.state))] == ["reported"]
    assert [(r.state, r.attempts) for r in state_rows(d.state_dir, select(Result))] == [("sent", 1)]
    events = state_rows(d.state_dir, select(AuditEvent.event_type, AuditEvent.actor, AuditEvent.details))
    assert ("reid.lookup", "cxrd:results") in {(e, a) for e, a, _ in events}
    sent = [json.loads(det) for e, _, det in events if e == "result.sent"]
    assert len(sent) == 1 and sorted(sent[0]["objects"]) == ["heatmap", "sr"]
    # `cxrd predictions` finds the study by the ORIGINAL UID with a reason (keyed mapping, audited as
    # reid.pseudonymize), and by its pseudonym; an original UID without a reason is a usage error.
    no_reason = d.cli("predictions", "--study", original.StudyInstanceUID)
    assert no_reason.returncode == 2 and "add --reason" in no_reason.stderr
    by_original = json.loads(d.cli("predictions", "--study", original.StudyInstanceUID, "--reason", "INC-1 check",
                                   "--format", "json", check=True).stdout)
    assert len(by_original) == 1 and set(by_original[0]["probabilities"]) == set(LABELS)
    assert by_original[0]["authentic"] is True and isinstance(by_original[0]["positive"], list)
    pseudo = by_original[0]["study_uid"]
    assert pseudo.startswith("2.25.") and pseudo != original.StudyInstanceUID
    assert json.loads(d.cli("predictions", "--study", pseudo, "--format", "json", check=True).stdout) == by_original
    table = list(csv.DictReader(io.StringIO(d.cli("predictions", "--format", "csv", check=True).stdout)))
    assert len(table) == 1 and float(table[0]["Atelectasis"]) == by_original[0]["probabilities"]["Atelectasis"]
    assert d.cli("predictions", "--since", "2999-01-01", "--format", "json", check=True).stdout.strip() == "[]"
    unknown = "1.2.826.0.1.3680043.2.1125.999999"  # an original UID we never received: audited as its pseudonym
    assert json.loads(d.cli("predictions", "--study", unknown, "--reason", "INC-2", "--format", "json",
                            check=True).stdout) == []
    listing = d.cli("predictions", check=True).stdout
    assert pseudo in listing and by_original[0]["instance_uid"] in listing and "positive:" in listing
    bad = d.cli("predictions", "--since", "yesterday-ish")
    assert bad.returncode != 0 and "ISO 8601" in bad.stderr and "Traceback" not in bad.stderr
    queries = state_rows(d.state_dir, select(AuditEvent.study_uid).where(AuditEvent.event_type == "predictions.query"))
    assert len(queries) == 6 and queries[0][0] == pseudo
    assert unknown not in json.dumps([tuple(q) for q in queries]) and queries[4][0].startswith("2.25.")
    lookups = state_rows(d.state_dir, select(AuditEvent.study_uid, AuditEvent.details)
                      .where(AuditEvent.event_type == "reid.pseudonymize"))
    assert [(st, json.loads(det)["reason"]) for st, det in lookups] == [(pseudo, "INC-1 check"),
                                                                        (queries[4][0], "INC-2")]
    # No PHI in the daemon's log or the audit trail: pseudonyms only.
    events = state_rows(d.state_dir, select(AuditEvent.event_type, AuditEvent.actor, AuditEvent.details))
    text = d.log_text() + json.dumps([tuple(e) for e in events])
    for secret in (*MARKERS.values(), original.StudyInstanceUID, original.SOPInstanceUID):
        assert secret not in text
    print(f"push -> SR+heatmap in Orthanc: {took:.1f}s")


@pytest.mark.slow
def test_destination_down_parks_result_failed_then_retry_sends_it(orthanc, daemon_factory, shared_data, tmp_path):
    orthanc.stop()  # the PACS is down when the result is ready
    d = started_daemon(daemon_factory, results_env(orthanc, CXRD_RESULTS__RETRY_BASE_S="0.2",
                                                   CXRD_RESULTS__MAX_ATTEMPTS="3"))
    files = copy_with_new_uids(shared_data / SRC, tmp_path / "in", 2, markers=MARKERS)
    original = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert storescu(d.dicom_port, *files)[1] == ["Success"] * 2

    def result_row():  # noqa: ANN202
        rows = state_rows(d.state_dir, select(Result.state, Result.attempts, Result.last_error))
        return rows[0] if rows and rows[0].state == "failed" else None
    row = wait_for(result_row)
    assert row.attempts == 3 and "not reachable" in row.last_error
    time.sleep(1.0)  # parked means parked: no further attempts
    assert state_rows(d.state_dir, select(Result.attempts))[0][0] == 3
    failed = [json.loads(det) for (det,) in state_rows(
        d.state_dir, select(AuditEvent.details).where(AuditEvent.event_type == "result.failed"))]
    assert [f["final"] for f in failed] == [False, False, True]
    status = json.loads(d.cli("status", "--format", "json", check=True).stdout)
    assert status["results"] == {"failed": 1}
    assert {r[0] for r in state_rows(d.state_dir, select(Instance.state))} == {"predicted"}

    orthanc.start()
    retry = d.cli("results", "retry", "--format", "json", check=True)
    assert json.loads(retry.stdout) == {"requeued": 1}
    wait_for(lambda: state_rows(d.state_dir, select(Result.state))[0][0] == "sent")
    [sr] = wait_for(lambda: orthanc.study_instances(original.StudyInstanceUID))
    assert sr["Modality"] == "SR" and sr["StudyInstanceUID"] == original.StudyInstanceUID
    assert {r[0] for r in state_rows(d.state_dir, select(Instance.state))} == {"reported"}

    assert original.StudyInstanceUID not in d.log_text()


def _with_view(path: Path, view: str) -> Path:
    ds = pydicom.dcmread(path)
    ds.ViewPosition = view
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.slow
def test_a_study_over_two_associations_gets_one_report_then_one_replacement(orthanc, daemon_factory, shared_data,
                                                                           tmp_path):
    """PA + lateral (LL) in one association, a repeat PA in a second: one report in the patient's study,
    referencing the two frontal images and listing the lateral as not analysed. One more PA later: a
    replacement whose Predecessor Documents Sequence names the first report. With heatmaps on, the
    study holds one heatmap per image-and-finding shown, and the replacement names the current one."""
    d = started_daemon(daemon_factory, results_env(orthanc, CXRD_RESULTS__SETTLE_QUIET_S="4",
                                                   CXRD_RESULTS__SETTLE_MAX_S="120",
                                                   CXRD_RESULTS__SEND_HEATMAP="true"))
    orthanc.add_modality("cxrd", "CXRD", d.dicom_port)
    files = copy_with_new_uids(shared_data / SRC, tmp_path / "in", 4, markers=MARKERS)
    pa, lateral, repeat, late = (_with_view(f, v) for f, v in zip(files, ("PA", "LL", "PA", "PA")))
    uids = {name: str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            for name, f in (("pa", pa), ("lateral", lateral), ("repeat", repeat), ("late", late))}
    study = str(pydicom.dcmread(pa, stop_before_pixels=True).StudyInstanceUID)
    ids = {name: orthanc.upload(f)["ID"] for name, f in (("pa", pa), ("lateral", lateral), ("repeat", repeat))}
    orthanc.push("cxrd", [ids["pa"], ids["lateral"]])  # association 1
    orthanc.push("cxrd", [ids["repeat"]])  # association 2

    def srs() -> list[dict]:
        return [i for i in orthanc.study_instances(study) if i.get("Modality") == "SR"]
    [first] = wait_for(srs)
    time.sleep(6.0)  # longer than the quiet period: still one report, not one per association
    assert [i["ID"] for i in srs()] == [first["ID"]]
    assert len(orthanc.get("/studies")) == 1
    sr1 = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{first['ID']}/file", raw=True)))
    referenced = {r.ReferencedSOPInstanceUID for e in sr1.CurrentRequestedProcedureEvidenceSequence
                  for s in e.ReferencedSeriesSequence for r in s.ReferencedSOPSequence}
    assert referenced == {uids["pa"], uids["repeat"]}
    sr_file = tmp_path / "sr1.dcm"
    sr_file.write_bytes(orthanc.get(f"/instances/{first['ID']}/file", raw=True))
    dump = dcmtk("dsrdump", "-v", "+Pl", str(sr_file))
    assert dump.returncode == 0, dump.stderr
    assert f"Not analysed (lateral view)" in dump.stdout and uids["lateral"] in dump.stdout
    assert "PredecessorDocumentsSequence" not in sr1
    states = {r[0]: r[1] for r in state_rows(d.state_dir, select(Instance.view, Instance.state))}
    assert states == {"frontal": "reported", "lateral": "not_analysed"}

    orthanc.push("cxrd", [orthanc.upload(late)["ID"]])  # one more PA, after the report was sent
    two = wait_for(lambda: (lambda found: found if len(found) == 2 else [])(srs()))
    [second] = [i for i in two if i["ID"] != first["ID"]]
    sr2 = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{second['ID']}/file", raw=True)))
    assert sr2.SOPInstanceUID != sr1.SOPInstanceUID and sr2.SeriesInstanceUID == sr1.SeriesInstanceUID
    [pred] = sr2.PredecessorDocumentsSequence
    assert pred.StudyInstanceUID == study
    assert pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr1.SOPInstanceUID
    referenced = {r.ReferencedSOPInstanceUID for e in sr2.CurrentRequestedProcedureEvidenceSequence
                  for s in e.ReferencedSeriesSequence for r in s.ReferencedSOPSequence}
    assert referenced == {uids["pa"], uids["repeat"], uids["late"]}
    sent = [json.loads(det) for (det,) in wait_for(lambda: (lambda rows: rows if len(rows) == 2 else [])(state_rows(
        d.state_dir, select(AuditEvent.details).where(AuditEvent.event_type == "result.sent"))))]
    reports = state_rows(d.state_dir, select(SentReport.id, SentReport.sop_instance_uid, SentReport.superseded_by)
                      .order_by(SentReport.id))
    assert [(r.sop_instance_uid, r.superseded_by) for r in reports] == [
        (str(sr1.SOPInstanceUID), reports[1].id), (str(sr2.SOPInstanceUID), None)]
    assert [s.get("replaces") for s in sent] == [None, reports[0].id]
    assert [sorted(s["objects"]) for s in sent] == [["heatmap", "sr"], ["heatmap", "sr"]]
    # The heatmaps: a replacement showing the same image and finding re-sent the same instance, so the
    # study holds one heatmap per distinct choice, and the newest report names one that is there.
    heatmaps = {i["SOPInstanceUID"] for i in orthanc.study_instances(study) if i.get("Modality") == "OT"}
    note1, note2 = (next(n for n in _texts(sr) if "AI heatmap" in n) for sr in (sr1, sr2))
    same_choice = note1.split(" (")[0] == note2.split(" (")[0]  # "... Grad-CAM of <finding> on image <uid>"
    assert len(heatmaps) == (1 if same_choice else 2)
    assert any(f"Secondary Capture {uid}" in note2 for uid in heatmaps)
    assert "out of date" in note2 and "out of date" not in note1
    assert study not in d.log_text()


def _texts(sr) -> list[str]:  # noqa: ANN001
    """The TEXT items of the SR's Qualitative Evaluations container."""
    [qual] = [i for i in sr.ContentSequence if i.ValueType == "CONTAINER"
              and i.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"]
    return [i.TextValue for i in qual.ContentSequence if i.ValueType == "TEXT"]


@pytest.mark.slow
def test_the_heatmap_segmentation_lands_in_the_original_study_on_the_sources_grid(  # noqa: ANN001
        orthanc, daemon_factory, shared_data, tmp_path):
    """With `results.heatmap_objects` naming both, Orthanc files the SR, the SC and the Segmentation a
    viewer overlays on the original: same Rows x Columns, derived from the original image."""
    d = started_daemon(daemon_factory, results_env(
        orthanc, CXRD_RESULTS__SEND_HEATMAP="true",
        CXRD_RESULTS__HEATMAP_OBJECTS='["secondary_capture", "segmentation"]'))
    orthanc.add_modality("cxrd", "CXRD", d.dicom_port)
    [src] = copy_with_new_uids(shared_data / SRC, tmp_path / "in", 1, markers=MARKERS)
    original = pydicom.dcmread(src, stop_before_pixels=True)
    orthanc.push("cxrd", [orthanc.upload(src)["ID"]])

    def back_in_orthanc() -> list[dict]:
        insts = orthanc.study_instances(original.StudyInstanceUID)
        return insts if {i.get("Modality") for i in insts} >= {"SR", "OT", "SEG"} else []
    by_modality = {i["Modality"]: i for i in wait_for(back_in_orthanc)}
    assert len(orthanc.get("/studies")) == 1
    tags = by_modality["SEG"]
    assert tags["PatientID"] == MARKERS["PatientID"] and tags["StudyInstanceUID"] == original.StudyInstanceUID
    seg = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{tags['ID']}/file", raw=True)))
    assert seg.SegmentationType == "FRACTIONAL" and (seg.Rows, seg.Columns) == (original.Rows, original.Columns)
    frame_src = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert frame_src.ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == original.SeriesInstanceUID
    assert seg.pixel_array.shape == (original.Rows, original.Columns) and seg.pixel_array.max() > 0
    simplified = orthanc.get(f"/instances/{tags['ID']}/simplified-tags")
    assert simplified["SegmentSequence"][0]["SegmentLabel"].startswith("Grad-CAM ")
    events = state_rows(d.state_dir, select(AuditEvent.event_type, AuditEvent.details))
    sent = [json.loads(det) for e, det in events if e == "result.sent"]
    assert len(sent) == 1 and sorted(sent[0]["objects"]) == ["heatmap", "heatmap_map", "sr"]
    text = d.log_text() + json.dumps([tuple(e) for e in events])
    for secret in (*MARKERS.values(), original.StudyInstanceUID, original.SOPInstanceUID):
        assert secret not in text


@pytest.mark.slow
def test_a_study_of_a_lateral_view_only_gets_a_report_saying_nothing_was_analysed(orthanc, daemon_factory,
                                                                                  shared_data, tmp_path):
    d = started_daemon(daemon_factory, results_env(orthanc))
    [lateral] = copy_with_new_uids(shared_data / SRC, tmp_path / "in", 1, markers=MARKERS)
    _with_view(lateral, "LL")
    header = pydicom.dcmread(lateral, stop_before_pixels=True)
    assert storescu(d.dicom_port, lateral)[1] == ["Success"]
    [sr] = wait_for(lambda: orthanc.study_instances(str(header.StudyInstanceUID)))
    sr_file = tmp_path / "sr.dcm"
    sr_file.write_bytes(orthanc.get(f"/instances/{sr['ID']}/file", raw=True))
    dump = dcmtk("dsrdump", "-v", "+Pl", str(sr_file))
    assert dump.returncode == 0, dump.stderr
    assert "No finding is reported: no image of this study was analysed" in dump.stdout
    assert str(header.SOPInstanceUID) in dump.stdout and '"Finding")=' not in dump.stdout
    assert state_rows(d.state_dir, select(Instance.state))[0][0] == "not_analysed"
    assert [r[0] for r in state_rows(d.state_dir, select(Result.state))] == ["sent"]
