"""The SR and heatmap SC built from plain values, the sender against a real dcmtk storescp, and the
results table's claim/lease/backoff rules on a real (migrated) SQLite database."""
from __future__ import annotations

import subprocess
import shutil
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid

from conftest import SHARED_DATA, dcmtk, free_port, wait_for_port
from cxrmodel.labels import LABELS
from daemon.dicom import finding_codes as codes
from daemon.dicom import result_objects as report
from daemon.stages.results import Destination, SendError, claim_results, retry_delay_s, retry_failed, send
from storage import db
from storage.models import Result, utcnow

torch.set_num_threads(2)

IDENTITY = report.StudyIdentity(study_uid=generate_uid(), patient_id="PID-77", patient_name="DOE^JANE",
                                issuer_of_patient_id="HOSP-A", accession_number="ACC-5", study_date="20240131")
DX = "1.2.840.10008.5.1.4.1.1.1.1"


def images(n: int = 2) -> list[report.SourceImage]:
    series = generate_uid()
    return [report.SourceImage(DX, generate_uid(), series) for _ in range(n)]


def findings(shift: float = 0.0) -> list[report.Finding]:
    return [report.Finding(label, p, 0.5, p >= 0.5)
            for label, p in zip(LABELS, np.clip(np.linspace(0.05, 0.95, len(LABELS)) + shift, 0, 1))]


MODEL = report.ModelIdentity(version="v7", weights_sha256="ab" * 32)


def _items(seq, name: str | None = None) -> list:  # noqa: ANN001 - pydicom Sequence
    """Content items of `seq` (not nested) whose concept name meaning is `name` (all if None)."""
    return [i for i in seq if name is None
            or ("ConceptNameCodeSequence" in i and i.ConceptNameCodeSequence[0].CodeMeaning == name)]


def _code(item) -> tuple[str, str]:  # noqa: ANN001
    return item.ConceptCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodingSchemeDesignator


def test_sr_is_a_tid_1500_report_of_the_chest_radiograph_in_the_original_study(tmp_path: Path):
    imgs = images(2)
    per_image = [findings(-0.2), findings(+0.2)]
    series, sop = report.report_uids("2.25.1", "v7", "sr", ["2.25.2", "2.25.3"])
    sr = report.build_sr(IDENTITY, imgs, per_image, model=MODEL, series_uid=series, sop_uid=sop)
    path = tmp_path / "sr.dcm"
    path.write_bytes(report.to_bytes(sr))
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert back.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert back.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
    assert (back.StudyInstanceUID, back.PatientID, back.PatientName, back.AccessionNumber, back.StudyDate,
            back.IssuerOfPatientID) == (IDENTITY.study_uid, "PID-77", "DOE^JANE", "ACC-5", "20240131", "HOSP-A")
    assert (back.SeriesInstanceUID, back.SOPInstanceUID) == (series, sop)
    refs = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert {r.ReferencedSOPInstanceUID for r in refs} == {im.sop_instance_uid for im in imgs}

    [procedure] = _items(back.ContentSequence, "Procedure reported")
    assert _code(procedure) == ("399208008", "SCT")  # the chest radiograph, not the algorithm
    [observer_uid] = _items(back.ContentSequence, "Device Observer UID")
    assert observer_uid.UID == MODEL.device_uid

    [measurements] = _items(back.ContentSequence, "Imaging Measurements")
    groups = _items(measurements.ContentSequence, "Measurement Group")
    assert len(groups) == len(LABELS)
    combined = report.study_findings(per_image)
    for label, group, study in zip(LABELS, groups, combined):
        [finding] = _items(group.ContentSequence, "Finding")
        assert _code(finding) == (codes.finding_code(label).value, codes.finding_code(label).scheme_designator)
        assert [i.TextValue for i in _items(group.ContentSequence, "Algorithm Version")] == ["v7"]
        probs = _items(group.ContentSequence, "Probability")
        assert len(probs) == 3  # the study value and one per image
        study_item, *image_items = probs
        assert float(study_item.MeasuredValueSequence[0].NumericValue) == pytest.approx(study.probability, abs=1e-6)
        assert study_item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "{probability}"
        [derivation] = _items(study_item.ContentSequence, "Derivation")
        assert _code(derivation) == ("56851009", "SCT")  # Maximum
        for item, im, fs in zip(image_items, imgs, per_image):
            [source] = _items(item.ContentSequence, "Source of Measurement")
            assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == im.sop_instance_uid
            expected = next(f.probability for f in fs if f.label == label)
            assert float(item.MeasuredValueSequence[0].NumericValue) == pytest.approx(expected, abs=1e-6)
        [threshold] = _items(group.ContentSequence, "Threshold Value")
        assert float(threshold.MeasuredValueSequence[0].NumericValue) == 0.5

    [qualitative] = _items(back.ContentSequence, "Qualitative Evaluations")
    calls = [i for i in qualitative.ContentSequence if i.ValueType == "CODE"]
    assert [_code(i)[0] for i in calls] == ["52101004" if f.positive else "272519000" for f in combined]
    texts = [i.TextValue for i in qualitative.ContentSequence if i.ValueType == "TEXT"]
    assert any("Not for diagnostic use without physician review" in t for t in texts)
    assert any("highest probability" in t for t in texts)

    [equipment] = [e for e in back.ContributingEquipmentSequence if e.Manufacturer == "cxrd"]  # + highdicom's
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert (equipment.Manufacturer, equipment.SoftwareVersions, equipment.DeviceUID) == ("cxrd", "v7",
                                                                                         MODEL.device_uid)
    assert equipment.ManufacturerModelName == report.MODEL_NAME

    dump = dcmtk("dsrdump", "-v", str(path))  # strict: any content item or relationship error aborts
    assert dump.returncode == 0 and not dump.stderr.strip(), dump.stderr
    assert "Imaging Measurement Report" in dump.stdout and 'Algorithm Version")="v7"' in dump.stdout
    assert dump.stdout.count('"Finding")=') == 14 and "Pleural effusion" in dump.stdout


def test_a_single_image_report_carries_its_value_once_without_a_derivation():
    sr = report.build_sr(IDENTITY, images(1), [findings()], model=MODEL, series_uid="1.2.3", sop_uid="1.2.4")
    [measurements] = _items(sr.ContentSequence, "Imaging Measurements")
    for group in _items(measurements.ContentSequence, "Measurement Group"):
        [prob] = _items(group.ContentSequence, "Probability")
        assert not _items(prob.ContentSequence, "Derivation") and _items(prob.ContentSequence,
                                                                           "Source of Measurement")


def test_the_device_uid_names_the_model_so_a_promotion_or_rollback_changes_it():
    """Reports built before a promotion keep the old model's UID; new ones carry the new model's;
    rolling back to the first model gives its UID again (same weights, same version)."""
    first, retrained = MODEL, report.ModelIdentity(version="v8", weights_sha256="cd" * 32)
    before = report.build_sr(IDENTITY, images(1), [findings()], model=first, series_uid="1.2.3", sop_uid="1.2.4")
    after = report.build_sr(IDENTITY, images(1), [findings()], model=retrained, series_uid="1.2.3", sop_uid="1.2.5")
    rolled_back = report.build_sr(IDENTITY, images(1), [findings()], model=report.ModelIdentity("v7", "AB" * 32),
                                  series_uid="1.2.3", sop_uid="1.2.6")
    uid = lambda sr: sr.ContributingEquipmentSequence[0].DeviceUID  # noqa: E731
    assert uid(before) == first.device_uid != uid(after) == retrained.device_uid
    assert uid(rolled_back) == uid(before)
    assert report.read(report.to_bytes(before)).ContributingEquipmentSequence[0].DeviceUID == first.device_uid
    same_version_other_weights = report.ModelIdentity("v7", "ef" * 32)
    assert same_version_other_weights.device_uid != first.device_uid
    assert all(len(u) <= 64 and u.startswith("2.25.") for u in (uid(before), uid(after)))


def test_every_finding_has_one_documented_code_and_the_readme_lists_it():
    assert [f.label for f in codes.FINDINGS] == list(LABELS)
    keys = [(f.code.value, f.code.scheme_designator) for f in codes.FINDINGS]
    assert len(set(keys)) == len(keys)  # never two findings on one concept
    assert all(f.source for f in codes.FINDINGS)
    private = [f for f in codes.FINDINGS if f.code.scheme_designator == codes.PRIVATE_SCHEME]
    assert all(f.source.startswith("private:") for f in private) and len(private) <= 1
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    for f in codes.FINDINGS:
        assert f"| {f.label} | {f.code.scheme_designator} {f.code.value} | {f.code.meaning} |" in readme, f.label


def test_sr_without_source_images_study_uid_or_per_image_findings_is_refused():
    with pytest.raises(ValueError, match="source image"):
        report.build_sr(IDENTITY, [], [], model=MODEL, series_uid="1.2", sop_uid="1.3")
    with pytest.raises(ValueError, match="Study Instance UID"):
        report.build_sr(report.StudyIdentity(study_uid=""), images(1), [findings()], model=MODEL,
                        series_uid="1.2", sop_uid="1.3")
    with pytest.raises(ValueError, match="each of its source images"):
        report.build_sr(IDENTITY, images(2), [findings()], model=MODEL, series_uid="1.2", sop_uid="1.3")
    with pytest.raises(ValueError, match="missing for some source image"):
        report.build_sr(IDENTITY, images(2), [findings(), findings()[:5]], model=MODEL, series_uid="1.2",
                        sop_uid="1.3")


def test_study_call_is_the_highest_probability_over_its_images():
    low, high = findings(-0.3), findings(+0.3)
    merged = report.study_findings([low, high, low])
    assert [f.label for f in merged] == list(LABELS)
    assert [f.probability for f in merged] == [f.probability for f in high]
    assert [f.positive for f in merged] == [f.probability >= 0.5 for f in high]


def test_report_uids_repeat_for_a_retry_and_change_when_the_study_grows():
    a = report.report_uids("2.25.9", "v1", "sr", ["2.25.1", "2.25.2"])
    assert a == report.report_uids("2.25.9", "v1", "sr", ["2.25.2", "2.25.1"])
    grown = report.report_uids("2.25.9", "v1", "sr", ["2.25.1", "2.25.2", "2.25.3"])
    assert grown[0] == a[0] and grown[1] != a[1]  # same series, new instance
    assert report.report_uids("2.25.9", "v2", "sr", ["2.25.1", "2.25.2"])[1] != a[1]
    assert all(len(u) <= 64 and u.startswith("2.25.") for u in (*a, *grown))


@pytest.fixture(scope="module")
def model():  # noqa: ANN201
    from cxrmodel.network import build_model
    return build_model(seed=0).eval()


@pytest.mark.slow
def test_heatmap_sc_of_a_real_radiograph_points_back_at_its_source(model):  # noqa: ANN001
    from cxrmodel.preprocess import load_image, preprocess

    png = next((SHARED_DATA / "nih" / "images").glob("*.png"))
    image = load_image(png)
    picture = report.heatmap_picture(model, preprocess(png), image, "Effusion")
    assert picture.dtype == np.uint8 and picture.shape == (*image.shape, 3)
    assert picture[..., 0].mean() >= picture[..., 2].mean()  # red-yellow overlay drawn on the film
    src = images(1)[0]
    sc = report.build_heatmap_sc(IDENTITY, src, picture, label="Effusion", probability=0.61, model_version="v7",
                                 series_uid=generate_uid(), sop_uid=generate_uid(), patient_orientation="P\\F")
    back = report.read(report.to_bytes(sc))
    assert back.Modality == "OT" and back.PhotometricInterpretation == "RGB"
    assert np.array_equal(back.pixel_array, picture)
    assert back.StudyInstanceUID == IDENTITY.study_uid and back.PatientID == "PID-77"
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == src.sop_instance_uid
    assert "Effusion" in back.ImageComments and "physician review" in back.ImageComments
    assert list(back.PatientOrientation) == ["P", "F"]


@pytest.mark.parametrize("source, carried", [("YES", "YES"), ("NO", "NO"), (None, None), ("", None)])
def test_heatmap_sc_carries_the_sources_burned_in_annotation(source, carried):  # noqa: ANN001
    """The SC copies the source's pixels, so it says what the source said about burned-in text: YES or
    NO as sent, and nothing when the source said nothing (never a NO it cannot know). The source is a
    real radiograph, de-identified as the vault holds it."""
    from cxrmodel.preprocess import load_image
    from storage.deid import deidentify
    from storage.keys import DeidKeys

    ds = pydicom.dcmread(SHARED_DATA / "dicom" / "derived" / "nih_00000001_000_explicit-vr-le.dcm")
    ds.pop("BurnedInAnnotation", None)
    if source is not None:
        ds.BurnedInAnnotation = source
    stored = report.to_bytes(deidentify(ds, DeidKeys(b"\x01" * 32, b"\x02" * 32)).dataset)
    header = report.read(stored)
    image = report.fit_for_overlay(load_image(stored), 64)
    picture = (np.stack([image] * 3, axis=-1) * 255).astype(np.uint8)
    sc = report.build_heatmap_sc(IDENTITY, images(1)[0], picture, label="Effusion", probability=0.61,
                                 model_version="v7", series_uid=generate_uid(), sop_uid=generate_uid(),
                                 burned_in_annotation=str(header.get("BurnedInAnnotation", "")))
    back = report.read(report.to_bytes(sc))
    assert back.get("BurnedInAnnotation") == carried


def test_a_large_film_is_shrunk_for_the_overlay_and_a_small_one_kept():
    big = np.random.default_rng(0).random((2800, 2400)).astype(np.float32)
    small = report.fit_for_overlay(big)
    assert small.shape == (1024, 878) and 0.4 < small.mean() < 0.6
    assert report.fit_for_overlay(small) is small


def test_send_stores_into_a_real_storescp_and_a_closed_port_is_a_send_error(tmp_path: Path):
    if shutil.which("storescp") is None:
        pytest.fail("dcmtk storescp not found (apt-get install dcmtk)")
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 20, proc)
        series, sop = report.report_uids("2.25.4", "v1", "sr", ["2.25.5"])
        sr = report.build_sr(IDENTITY, images(1), [findings()], model=MODEL, series_uid=series, sop_uid=sop)
        send([sr], Destination(calling_aet="CXRD", called_aet="PACS", host="127.0.0.1", port=port))
        deadline = time.monotonic() + 10
        while not list(out.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        [stored] = list(out.iterdir())
        assert pydicom.dcmread(stored).SOPInstanceUID == sop
    finally:
        proc.terminate()
        proc.wait(10)
    t0 = time.monotonic()
    with pytest.raises(SendError, match="not reachable"):
        send([sr], Destination(calling_aet="CXRD", called_aet="PACS", host="127.0.0.1", port=port, timeout_s=5))
    assert time.monotonic() - t0 < 5


def test_retry_delay_doubles_from_the_base_and_is_capped():
    assert [retry_delay_s(n, 0.5) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay_s(60, 5.0) == 86400.0


@pytest.fixture()
def sessions(tmp_path: Path):  # noqa: ANN201
    engine = db.engine_from_url(f"sqlite:///{tmp_path / 'cxrd.db'}")
    db.migrate(engine)
    yield db.sessions(engine)
    engine.dispose()


def test_a_claimed_result_is_leased_once_and_taken_back_after_its_lease_runs_out(sessions):
    with sessions.begin() as s:
        s.add(Result(study_uid="2.25.1", model_version="v1", kind="sr", next_attempt_at=utcnow()))
        s.add(Result(study_uid="2.25.2", model_version="v1", kind="sr", next_attempt_at=utcnow() + timedelta(hours=1)))
    with sessions.begin() as s:
        first = claim_results(s, "host:1:a", limit=5, lease_s=0.3)
    with sessions.begin() as s:
        assert claim_results(s, "host:2:b", limit=5) == []  # leased, and the other is not due
        row = s.get(Result, first[0])
        assert (row.state, row.claimed_by, row.attempts) == ("sending", "host:1:a", 1)
    assert len(first) == 1
    time.sleep(0.4)
    with sessions.begin() as s:
        assert claim_results(s, "host:2:b", limit=5) == first  # the first owner died: lease expired
        assert s.get(Result, first[0]).attempts == 2


def test_retry_puts_only_failed_results_back_with_a_fresh_count(sessions):
    with sessions.begin() as s:
        s.add_all([Result(study_uid="2.25.1", model_version="v1", kind="sr", state="failed", attempts=8,
                          last_error="down"),
                   Result(study_uid="2.25.2", model_version="v1", kind="sr", state="sent", attempts=1)])
    with sessions.begin() as s:
        assert retry_failed(s) == 1
    with sessions() as s:
        rows = {r.study_uid: (r.state, r.attempts, r.last_error) for r in s.query(Result)}
    assert rows == {"2.25.1": ("pending", 0, ""), "2.25.2": ("sent", 1, "")}


@pytest.mark.postgres
def test_postgresql_claimers_skip_a_row_another_sender_holds(fresh_pg_database):  # noqa: ANN001
    engine = db.engine_from_url(fresh_pg_database)
    db.migrate(engine)
    sessions = db.sessions(engine)
    with sessions.begin() as s:
        s.add_all([Result(study_uid=f"2.25.{i}", model_version="v1", kind="sr", next_attempt_at=utcnow())
                   for i in (1, 2)])
    holder = sessions()
    holder.begin()
    try:
        held = claim_results(holder, "host:1:a", limit=1)  # row locked until `holder` commits
        with sessions.begin() as s:
            other = claim_results(s, "host:2:b", limit=5)  # would block on the lock without SKIP LOCKED
        assert len(held) == 1 and len(other) == 1 and set(held).isdisjoint(other)
        holder.commit()
    finally:
        holder.close()
        engine.dispose()


def _signed_predictions(keys, instance_id: int, sop: str, probability: float = 0.7) -> list:  # noqa: ANN001
    """Prediction rows as the worker writes them, with their MAC (storage.records)."""
    from storage import records
    from storage.models import Prediction
    return [Prediction(instance_id=instance_id, model_version="v1", label=label, probability=probability,
                       threshold=0.5, positive=probability >= 0.5,
                       mac=records.mac(keys.record_key, sop, "v1", label, probability, 0.5, probability >= 0.5))
            for label in LABELS]


def test_a_study_without_reidentification_entry_is_parked_at_once_and_never_sent(sessions, tmp_path: Path):
    from cxrmodel.registry import Registry
    from daemon.stages.results import ResultsSender
    from storage import keys as key_store
    from storage.models import AuditEvent, Instance, Prediction
    from storage.vault import Vault

    key_store.init_keys(tmp_path / "master.key", tmp_path / "keyring.json")
    keys = key_store.load_keys(tmp_path / "master.key", tmp_path / "keyring.json")
    with sessions.begin() as s:
        inst = Instance(sop_instance_uid="2.25.11", study_uid="2.25.10", series_uid="2.25.12", sop_class_uid=DX,
                        state="predicted")
        s.add(inst)
        s.flush()
        s.add_all(_signed_predictions(keys, inst.id, "2.25.11"))
        s.add(Result(study_uid="2.25.10", model_version="v1", kind="sr", next_attempt_at=utcnow()))
    sent: list = []
    sender = ResultsSender(sessions=sessions, vault=Vault(tmp_path / "vault", keys.keyring), keys=keys,
                           registry=Registry(tmp_path / "models"), max_attempts=5,
                           destination=Destination(calling_aet="CXRD", called_aet="PACS", host="127.0.0.1", port=9),
                           sender=lambda objects, dest: sent.append(objects))
    assert sender.run_once() is True
    assert sender.run_once() is False  # parked, not due again
    with sessions() as s:
        row = s.query(Result).one()
        assert (row.state, row.attempts) == ("failed", 1) and "re-identification" in row.last_error
        events = [(e.event_type, e.actor, e.outcome) for e in s.query(AuditEvent).order_by(AuditEvent.seq)]
        assert s.query(Instance).one().state == "predicted"
    assert events == [("reid.lookup", "cxrd:results", 0), ("result.failed", "cxrd:results", 8)]
    assert sent == []


def _signed_study(sessions, tmp_path: Path, sops: tuple[str, ...],  # noqa: ANN001
                  original: dict[str, str] | None = None) -> tuple[list[int], object, list]:
    """A predicted study as the worker leaves it (signed rows, re-identification entries, a pending
    result) and a results sender that records what it would send: (instance ids, sender, sent)."""
    from cxrmodel.registry import Registry
    from daemon.stages.results import ResultsSender
    from storage import keys as key_store
    from storage import reid
    from storage.models import Instance, ReidEntry
    from storage.vault import Vault

    key_store.init_keys(tmp_path / "master.key", tmp_path / "keyring.json")
    keys = key_store.load_keys(tmp_path / "master.key", tmp_path / "keyring.json")
    ids = []
    with sessions.begin() as s:
        for sop in sops:
            inst = Instance(sop_instance_uid=sop, study_uid="2.25.10", series_uid="2.25.12", sop_class_uid=DX,
                            state="predicted")
            s.add(inst)
            s.flush()
            ids.append(inst.id)
            s.add(ReidEntry(sop_instance_uid=sop, study_uid="2.25.10", sealed=reid.seal_reid(
                keys.reid_key, sop, {"study_uid": "1.2.3", "sop_instance_uid": "1.2.3." + sop[-2:],
                                     "patient_id": "P1", **(original or {})})))
            s.add_all(_signed_predictions(keys, inst.id, sop, probability=0.2))
        s.add(Result(study_uid="2.25.10", model_version="v1", kind="sr", next_attempt_at=utcnow()))
    sent: list = []
    sender = ResultsSender(sessions=sessions, vault=Vault(tmp_path / "vault", keys.keyring), keys=keys,
                           registry=Registry(tmp_path / "models"), max_attempts=5, send_heatmap=False,
                           destination=Destination(calling_aet="CXRD", called_aet="PACS", host="127.0.0.1", port=9),
                           sender=lambda objects, dest: sent.append(objects))
    return ids, sender, sent


@pytest.mark.parametrize("tamper", ["probability", "call", "moved", "unsigned"])
def test_a_report_is_never_built_from_prediction_rows_cxrd_did_not_write(sessions, tmp_path: Path, tamper):
    """An insider with database access edits a probability, flips a call, moves a row to another
    instance, or inserts one: the result is parked as failed, audited as tampering, and nothing is sent."""
    from sqlalchemy import text
    from storage.models import AuditEvent

    ids, sender, sent = _signed_study(sessions, tmp_path, ("2.25.11", "2.25.21"))
    with sessions.begin() as s:
        edit = {"probability": "UPDATE predictions SET probability = 0.97 WHERE label = 'Pneumothorax'",
                "call": "UPDATE predictions SET positive = 1 WHERE label = 'Mass'",
                "moved": f"UPDATE predictions SET instance_id = {ids[1]} WHERE instance_id = {ids[0]} "
                         "AND label = 'Nodule'",
                "unsigned": "UPDATE predictions SET mac = '' WHERE label = 'Edema'"}[tamper]
        if tamper == "moved":
            s.execute(text(f"DELETE FROM predictions WHERE instance_id = {ids[1]} AND label = 'Nodule'"))
        s.execute(text(edit))
    assert sender.run_once() is True
    with sessions() as s:
        row = s.query(Result).one()
        assert row.state == "failed" and "failed authentication" in row.last_error
        events = [(e.event_type, e.outcome) for e in s.query(AuditEvent).order_by(AuditEvent.seq)]
    assert ("security.tamper", 12) in events and ("reid.lookup", 0) not in events
    assert sent == []


def test_untouched_signed_rows_make_a_report(sessions, tmp_path: Path):
    """The control for the test above: the same rows, unedited, are sent."""
    _, sender, sent = _signed_study(sessions, tmp_path, ("2.25.11", "2.25.21"))
    assert sender.run_once() is True
    with sessions() as s:
        assert s.query(Result).one().state == "sent"
    assert len(sent) == 1


def test_an_object_that_fails_its_check_is_parked_audited_and_never_sent(sessions, tmp_path: Path):
    """A modality sent a 20-character accession number (SH allows 16): the report built from it would
    be invalid DICOM in the patient's record, so it is parked with the check's message, audited, and
    nothing leaves; the message names the attribute, not the value."""
    from storage.models import AuditEvent, Instance

    _, sender, sent = _signed_study(sessions, tmp_path, ("2.25.11", "2.25.21"),
                                    original={"accession_number": "ACC-0123456789-XYZ"})
    assert sender.run_once() is True
    with sessions() as s:
        row = s.query(Result).one()
        assert row.state == "failed" and row.last_error.startswith("sr failed validation: AccessionNumber")
        assert "ACC-0123456789" not in row.last_error
        events = [(e.event_type, e.outcome, e.details) for e in s.query(AuditEvent).order_by(AuditEvent.seq)]
        assert {i.state for i in s.query(Instance)} == {"predicted"}
    failed = [d for t, o, d in events if t == "result.failed"]
    assert len(failed) == 1 and "failed validation" in str(failed[0]) and "ACC-0123456789" not in str(events)
    assert sent == []


def test_the_report_sent_names_the_current_models_device(sessions, tmp_path: Path):
    """The sender reads the model's weights hash from the registry manifest (no torch load)."""
    from cxrmodel.manifest import Manifest

    _, sender, sent = _signed_study(sessions, tmp_path, ("2.25.11",))
    (tmp_path / "models" / "v1").mkdir(parents=True)
    (tmp_path / "models" / "v1" / "manifest.json").write_text(
        Manifest().stamped("v1", "12" * 32).to_json(), encoding="utf-8")
    assert sender.run_once() is True
    [[sr]] = sent
    [ours] = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "cxrd"]
    assert ours.DeviceUID == report.ModelIdentity("v1", "12" * 32).device_uid
