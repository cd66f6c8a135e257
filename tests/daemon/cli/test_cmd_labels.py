"""The hospital's own studies become training data: labels imported by pseudonym, exported as a
ChestX-ray14 batch the retraining reader accepts, never an image that may carry burned-in text."""
from __future__ import annotations

import csv

from conftest import copy_with_new_uids, storescu
from cxrmodel.chestxray14 import read_dataset
from sqlalchemy import create_engine, select

from storage.models import AuditEvent, Instance


def test_import_by_pseudonym_then_export_a_readable_batch_refusing_burned_in(daemon_factory, shared_data, tmp_path):
    src = shared_data / "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"
    clean = copy_with_new_uids(src, tmp_path / "clean", 2, markers={"BurnedInAnnotation": "NO"}, prefix="c")
    risky = copy_with_new_uids(src, tmp_path / "risky", 1, markers={"BurnedInAnnotation": "YES"}, prefix="r")
    d = daemon_factory().start()
    assert storescu(d.dicom_port, *clean, *risky)[1] == ["Success"] * 3
    assert d.stop() == 0
    engine = create_engine(f"sqlite:///{d.state_dir / 'cxrd.db'}")
    with engine.connect() as c:
        rows = c.execute(select(Instance.sop_instance_uid, Instance.burned_in_annotation).order_by(Instance.id)).all()
    pseudo = [r[0] for r in rows]
    assert [r[1] for r in rows] == ["no", "no", "yes"]
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID"])
        w.writerow([f"{pseudo[0]}.png", "Cardiomegaly|Effusion", 0, 1])
        w.writerow([pseudo[1], "No Finding", 0, 1])
        w.writerow([pseudo[2], "Cardiomegaly", 0, 1])
        w.writerow(["2.25.1", "Cardiomegaly", 0, 1])          # not an image we received
        w.writerow([pseudo[0], "Broken Heart", 0, 1])         # unknown label
    r = d.cli("labels", "import", str(labels))
    assert r.returncode == 1  # problems are reported with file and line, the good rows are kept
    assert "3 imported" in r.stdout
    assert "labels.csv:5: no received image 2.25.1" in r.stderr and "labels.csv:6: invalid Finding Labels" in r.stderr
    r = d.cli("labels", "export", "--format", "json")
    assert r.returncode == 0, r.stderr
    import json
    out = json.loads(r.stdout)
    assert out["images"] == 2 and out["refused_burned_in"] == [pseudo[2]]
    batch = read_dataset(out["destination"])
    assert {e.image for e in batch.entries} == {f"{pseudo[0]}.png", f"{pseudo[1]}.png"}
    assert not batch.issues
    assert {e.findings for e in batch.entries} == {("Cardiomegaly", "Effusion"), ()}
    assert d.cli("labels", "export", "--format", "json").stdout.count('"images": 0') == 1  # only new labels
    with engine.connect() as c:
        events = set(c.execute(select(AuditEvent.event_type)).scalars())
    assert {"import.labels", "export.training"} <= events
