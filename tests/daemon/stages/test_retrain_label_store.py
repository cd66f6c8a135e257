"""Scheduled retraining reads the ground-truth store itself: labels from radiology reports (recorded
and matched as the HL7 intake does) and from `cxrd labels import`, on real NIH DICOM images stored
through ingest, become an inbox batch through the one export path; manual wins over a report for the
same image; `labels.uncertain_as` decides what an uncertain finding trains as; a label is exported
once; images whose Burned In Annotation is not NO are refused and counted, never silently dropped."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from conftest import copy_with_new_uids
from daemon.cli import main as cli
from daemon.runtime import Runtime
from daemon.stages.chest_rule import chest_rule_from
from daemon.stages.ingest import Ingest
from daemon.stages.report_matching import label_text, match_once
from daemon.stages.retraining import inbox_batches, merge_batches, retrain_once
from daemon.stages.training_data import purge_training_copies
from storage.deid import DeidOptions
from storage.models import AuditEvent, Instance, Label
from storage.reports import IncomingReport, record_report
from storage.vault import Vault
from test_retraining import make_runtime

pytestmark = pytest.mark.slow

NIH_DICOM = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"


def store_images(rt: Runtime, paths: list[Path]) -> list[str]:
    """Store files as a C-STORE does (chest rule, view rule, de-identification, vault); returns the
    pseudonymous SOP Instance UIDs, in order."""
    s = rt.settings
    ingest = Ingest(engine=rt.engine, read_sessions=rt.read_sessions, vault=Vault(rt.vault_dir, rt.keys.keyring),
                    keys=rt.keys, deid=DeidOptions(**dataclasses.asdict(s.deid)),
                    chest=chest_rule_from(s.dicom.chest_body_parts, s.dicom.min_image_size),
                    non_chest=s.dicom.non_chest, min_free_mb=0, hostname="test")
    before = _instances(rt)
    for p in paths:
        ds = pydicom.dcmread(p)
        assert ingest.store(ds, ds.file_meta, "MODALITY", "127.0.0.1") == 0x0000
    return [uid for uid in _instances(rt) if uid not in before]


def _instances(rt: Runtime) -> list[str]:
    with rt.read_sessions() as s:
        return list(s.scalars(select(Instance.sop_instance_uid).order_by(Instance.id)))


def study(shared_data: Path, tmp_path: Path, name: str, n: int, burned_in: str | None = "NO") -> tuple[str, list[Path]]:
    """n copies of a real NIH radiograph in one new study of its own patient; (original study UID, files)."""
    markers = {"PatientID": f"PAT-{name}"} | ({"BurnedInAnnotation": burned_in} if burned_in else {})
    paths = copy_with_new_uids(shared_data / NIH_DICOM, tmp_path / "dicom" / name, n, markers=markers, prefix=name)
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), paths


def send_report(rt: Runtime, control: str, study_uid: str, text: str) -> None:
    """A final ORU^R01 report as the HL7 intake records it, then one matching pass."""
    vault = Vault(rt.vault_dir, rt.keys.keyring)
    incoming = IncomingReport(sender="RIS^HOSP", message_type="ORU^R01", control_id=control, result_status="F",
                              study_uid=study_uid, accession="", text=text)
    record_report(rt.sessions, vault, rt.keys, incoming, label_text(text), keep_text=True, match_wait_s=3600)
    match_once(rt.sessions, vault, rt.keys.audit_key, 3600)


def import_manual(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rt: Runtime, rows: list[tuple[str, str]]) -> None:
    """`cxrd labels import` (in this process) of a ChestX-ray14-layout CSV keyed by pseudonym."""
    path = tmp_path / "manual-labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", "Finding Labels"])
        w.writerows(rows)
    monkeypatch.setenv("CXRD_STORAGE__STATE_DIR", str(rt.state_dir))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert cli.main(["labels", "import", str(path)]) == 0


def batch_rows(rt: Runtime, batch: str) -> dict[str, str]:
    with open(Path(rt.settings.retrain.inbox) / batch / "Data_Entry_2017.csv", newline="") as f:
        return {r["Image Index"].removesuffix(".png"): r["Finding Labels"] for r in csv.DictReader(f)}


def used_in(rt: Runtime) -> dict[str, str]:
    with rt.read_sessions() as s:
        return dict(s.execute(select(Instance.sop_instance_uid, Label.used_in_model)
                              .join(Label, Label.instance_id == Instance.id)).all())


def test_report_and_manual_labels_enter_a_run_once_manual_winning(tmp_path, shared_data, chestxray14_set,
                                                                  monkeypatch):
    rt = make_runtime(tmp_path, CXRD_RETRAIN__MIN_NEW_IMAGES="40")  # labels.uncertain_as = "exclude" (default)
    report_study, report_files = study(shared_data, tmp_path, "rep", 2)
    uncertain_study, uncertain_files = study(shared_data, tmp_path, "unc", 1)
    both_study, both_files = study(shared_data, tmp_path, "both", 1)
    _, undeclared_files = study(shared_data, tmp_path, "nih", 1, burned_in=None)  # as NIH sends it
    rep, unc, both, undeclared = (store_images(rt, f) for f in (report_files, uncertain_files, both_files,
                                                                undeclared_files))
    send_report(rt, "M1", report_study, "FINDINGS: The heart is enlarged. No pleural effusion. "
                                        "IMPRESSION: Cardiomegaly.")
    send_report(rt, "M2", uncertain_study, "IMPRESSION: Left basilar opacity; cannot exclude pneumonia.")
    send_report(rt, "M3", both_study, "IMPRESSION: Cardiomegaly.")
    import_manual(tmp_path, monkeypatch, rt, [(both[0], "Effusion"), (undeclared[0], "Mass")])
    inbox = Path(rt.settings.retrain.inbox)
    chestxray14_set(inbox / "2026-11-01", 0, 60, "learnable")  # enough for a model to train on

    first = retrain_once(rt, "schedule")
    assert first["outcome"] in ("promoted", "rejected"), first  # trained, on the store's labels too
    store = first["label_store"]
    assert (store["images"], store["manual"], store["report"]) == (3, 1, 2), store
    assert store["refused_burned_in"] == store["refused_burned_in_unknown"] == 1
    assert store["uncertain_left_out"] == 1
    assert first["new_images"] == 63 and first["new_sources"] == {"manual": 1, "report": 2, "inbox": 60}
    batch = store["batch"]
    assert batch.startswith("cxrd-labels-") and batch.endswith(f"-run{1}") and batch in first["new_batches"]
    rows = batch_rows(rt, batch)
    assert rows == {rep[0]: "Cardiomegaly", rep[1]: "Cardiomegaly", both[0]: "Effusion"}  # manual wins
    manifest = rt.registry.manifest(first["candidate"])
    assert batch in manifest.training["batches"]
    marks = used_in(rt)
    assert marks[rep[0]] == marks[both[0]] == batch
    assert marks[unc[0]] == marks[undeclared[0]] == ""  # left out, not lost
    # the export is a de-identified training copy `cxrd purge` finds (training-exports.jsonl)
    exports = [json.loads(line)["path"] for line in (rt.state_dir / "training-exports.jsonl").read_text().splitlines()]
    assert str((inbox / batch).resolve()) in exports

    # Under uncertain_as = "positive" the uncertain finding trains as positive. A manual label that
    # replaces an exported report label is exported again; nothing else exported before is, and two
    # images are too few for a run.
    rt2 = make_runtime(tmp_path, CXRD_LABELS__UNCERTAIN_AS="positive", CXRD_RETRAIN__MIN_NEW_IMAGES="40")
    import_manual(tmp_path, monkeypatch, rt2, [(rep[0], "Nodule")])
    second = retrain_once(rt2, "schedule")
    assert second["outcome"] == "skipped" and second["new_images"] == 2
    assert (second["label_store"]["images"], second["label_store"]["manual"], second["label_store"]["report"]) \
        == (2, 1, 1)
    assert "1 labeled image(s) not exported: Burned In Annotation not NO (1 not declared)" in second["reason"]
    findings = batch_rows(rt2, second["label_store"]["batch"])
    assert set(findings) == {unc[0], rep[0]} and "Pneumonia" in findings[unc[0]].split("|")

    third = retrain_once(rt2, "schedule")  # the second run's batch is still new; nothing else is
    assert third["label_store"]["batch"] is None and third["label_store"]["images"] == 0
    assert third["new_images"] == 2 and third["new_sources"] == {"manual": 1, "report": 1, "inbox": 0}
    assert sorted(p.name for p in inbox.iterdir()) == sorted(["2026-11-01", batch, second["label_store"]["batch"]])
    # what the next training reads: the latest label of an image exported twice
    merged = merge_batches(inbox_batches(inbox), tmp_path / "merged")
    with open(merged / "Data_Entry_2017.csv", newline="") as f:
        listed = [(r["Image Index"].removesuffix(".png"), r["Finding Labels"]) for r in csv.DictReader(f)]
    trains_as = dict(listed)
    assert len(listed) == len(trains_as) == 60 + 4
    assert trains_as[rep[0]] == "Nodule" and trains_as[rep[1]] == "Cardiomegaly"
    # purging the image removes its training copies from both batches the runs wrote
    removed = purge_training_copies(rt.state_dir, inbox, [rep[0]])
    assert removed[rep[0]] >= 2 and not list(inbox.glob(f"*/images/{rep[0]}.png"))
    assert rep[0] not in batch_rows(rt, batch) and rep[1] in batch_rows(rt, batch)
    with rt.read_sessions() as s:
        trained = [json.loads(d) for d in s.scalars(select(AuditEvent.details)
                                                      .where(AuditEvent.event_type == "model.trained"))]
    assert trained[0]["new_sources"] == {"manual": 1, "report": 2, "inbox": 60}


def test_undeclared_burned_in_images_are_refused_and_counted_and_the_store_can_be_turned_off(
        tmp_path, shared_data, monkeypatch, capsys):
    off = make_runtime(tmp_path, CXRD_RETRAIN__USE_LABEL_STORE="false", CXRD_RETRAIN__MIN_NEW_IMAGES="5")
    _, nih = study(shared_data, tmp_path, "nih", 2, burned_in=None)
    _, clean = study(shared_data, tmp_path, "clean", 1)
    undeclared, declared = store_images(off, nih), store_images(off, clean)
    import_manual(tmp_path, monkeypatch, off, [(undeclared[0], "Mass"), (undeclared[1], "No Finding"),
                                               (declared[0], "Nodule")])
    inbox = Path(off.settings.retrain.inbox)
    summary = retrain_once(off, "manual")  # inbox only: the store is not read
    assert "label_store" not in summary and summary["outcome"] == "skipped"
    assert not any(inbox.iterdir()) and set(used_in(off).values()) == {""}

    rt = make_runtime(tmp_path, CXRD_RETRAIN__MIN_NEW_IMAGES="5")
    summary = retrain_once(rt, "manual")
    assert summary["outcome"] == "skipped" and summary["new_images"] == 1
    assert summary["label_store"]["refused_burned_in"] == summary["label_store"]["refused_burned_in_unknown"] == 2
    assert summary["reason"] == ("1 new labeled images (< 5); 2 labeled image(s) not exported: "
                                 "Burned In Annotation not NO (2 not declared)")
    assert used_in(rt) == {undeclared[0]: "", undeclared[1]: "", declared[0]: summary["label_store"]["batch"]}
    capsys.readouterr()
    assert cli.main(["retrain", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "0 new image(s): 0 manual label(s), 0 report label(s), 0 from inbox batches " \
           "(label store not used: retrain.use_label_store = false)" in listed
    assert "1 new image(s): 1 manual label(s), 0 report label(s), 0 from inbox batches; label store: " \
           "2 labeled image(s) not exported: Burned In Annotation not NO (2 not declared)" in listed
