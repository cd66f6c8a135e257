"""`cxrd purge`: dry run counts, a real run crypto-shreds and audits, retention 0 keeps everything."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import text

from config import load_settings
from daemon.cli import main as cli
from daemon.runtime import Runtime
from storage.models import Instance


@pytest.fixture
def cxrd(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRD_STORAGE__STATE_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setattr(cli, "COMMAND_MODULES", list(dict.fromkeys(cli.COMMAND_MODULES + ["daemon.cli.purge"])))
    assert cli.main(["init"]) == 0
    rt = Runtime(load_settings(None))
    old = datetime.now(timezone.utc) - timedelta(days=40)
    with rt.sessions.begin() as s:
        for i, received in enumerate((old, old, datetime.now(timezone.utc))):
            rt.vault.put(f"obj{i}", b"pixels", fsync=False)
            s.add(Instance(sop_instance_uid=f"2.25.{i}", study_uid="2.25.77", series_uid="2.25.78",
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", state="reported",
                           vault_object=f"obj{i}", received_at=received))
    return rt, monkeypatch


def test_purge_dry_run_then_real_run(cxrd, capsys):
    rt, monkeypatch = cxrd
    capsys.readouterr()
    assert cli.main(["purge", "--dry-run"]) == 0
    assert "kept forever" in capsys.readouterr().out  # default retention_days = 0
    monkeypatch.setenv("CXRD_STORAGE__RETENTION_DAYS", "30")
    assert cli.main(["purge", "--dry-run", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["expired"] == 2
    assert sorted(rt.vault.object_ids()) == ["obj0", "obj1", "obj2"]
    assert cli.main(["purge"]) == 0
    assert "crypto-shredded 2 images" in capsys.readouterr().out
    assert sorted(rt.vault.object_ids()) == ["obj2"]
    with rt.engine.connect() as conn:
        kinds = [r[0] for r in conn.execute(text("SELECT event_type FROM audit_events "
                                                 "WHERE event_type <> 'app.init' ORDER BY seq"))]
    assert kinds == ["instance.deleted", "instance.deleted", "purge.expired"]
    assert cli.main(["audit", "verify"]) == 0


def test_purge_removes_exported_pngs_csv_rows_and_cached_features(daemon_factory, shared_data, tmp_path):
    """Real images in, labelled, exported twice (inbox and a folder of the operator's choosing), their
    features cached the way retraining caches them; after `cxrd purge` nothing derived from them is
    left in the state directory or the export folder, and what belongs to other images is untouched."""
    import csv as _csv

    from sqlalchemy import create_engine, update

    from conftest import copy_with_new_uids, storescu
    from cxrmodel import features as FC
    from cxrmodel.network import build_model
    from cxrmodel.preprocess import PreprocessSpec

    src = shared_data / "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"
    files = copy_with_new_uids(src, tmp_path / "in", 3, markers={"BurnedInAnnotation": "NO"})
    for n, path in enumerate(files):  # three different films, so no two share cached features
        ds = pydicom.dcmread(path)
        pixels = bytearray(ds.PixelData)
        pixels[: 4096] = bytes([n * 80]) * 4096
        ds.PixelData = bytes(pixels)
        ds.save_as(path, enforce_file_format=True)
    d = daemon_factory().start()
    assert storescu(d.dicom_port, *files)[1] == ["Success"] * 3
    assert d.stop() == 0
    engine = create_engine(f"sqlite:///{d.state_dir / 'cxrd.db'}")
    with engine.connect() as c:
        uids = list(c.execute(text("SELECT sop_instance_uid FROM instances ORDER BY id")).scalars())
    labels = tmp_path / "labels.csv"
    labels.write_text("Image Index,Finding Labels\n" + "".join(f"{u},No Finding\n" for u in uids))
    assert d.cli("labels", "import", str(labels)).returncode == 0
    inbox_export = json.loads(d.cli("labels", "export", "--format", "json", check=True).stdout)
    elsewhere = tmp_path / "operator-export"
    r = d.cli("labels", "export", str(elsewhere), "--all", "--format", "json")
    assert r.returncode == 0, r.stderr
    batches = [Path(inbox_export["destination"]), elsewhere]
    assert all(len(list((b / "images").glob("*.png"))) == 3 for b in batches)
    # the feature cache as `cxrd retrain` fills it (file names are the pseudonyms)
    seal, unseal = FC.aesgcm_pair(bytes(32))
    cache = FC.FeatureCache(d.state_dir / "cache" / "features", seal, unseal)
    spec = PreprocessSpec(size=64)
    FC.compute_features(build_model(seed=0).eval(), sorted((batches[0] / "images").glob("*.png")), spec, [0, 1], cache)
    assert len(list((d.state_dir / "cache" / "features").rglob("*.feat"))) == 6

    # two images expire (received 40 days ago, predicted); the third is recent
    expired, kept = uids[:2], uids[2]
    # a finished retraining run's work folder names its held-out test images
    run_out = d.state_dir / "cache" / "retrain-1" / "out"
    run_out.mkdir(parents=True)
    (run_out / "result.json").write_text(json.dumps({"test_images": [f"{u}.png" for u in uids], "thresholds": {}}))
    with engine.begin() as c:
        c.execute(update(Instance).where(Instance.sop_instance_uid.in_(expired))
                  .values(received_at=datetime.now(timezone.utc) - timedelta(days=40), state="reported"))
    d.env["CXRD_STORAGE__RETENTION_DAYS"] = "30"
    r = d.cli("purge", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["shredded"] == 2

    for batch in batches:
        assert sorted(p.name for p in (batch / "images").iterdir()) == [f"{kept}.png"]
        with open(batch / "Data_Entry_2017.csv", newline="") as f:
            assert [row[0] for row in _csv.reader(f)][1:] == [f"{kept}.png"]
    assert len(list((d.state_dir / "cache" / "features").rglob("*.feat"))) == 2  # the kept image's two views
    assert json.loads((run_out / "result.json").read_text())["test_images"] == [f"{kept}.png"]
    again = FC.compute_features(build_model(seed=0).eval(), [batches[0] / "images" / f"{kept}.png"], spec, [0, 1],
                                FC.FeatureCache(d.state_dir / "cache" / "features", seal, unseal))
    assert again.shape == (1, 2, 1024)
    # nothing outside the database names a purged image or holds a file made from it
    for root in (d.state_dir, elsewhere):
        for path in root.rglob("*"):
            if path.is_file() and not path.name.startswith("cxrd.db"):
                blob = path.read_bytes()
                for uid in expired:
                    assert uid not in path.name and uid.encode() not in blob, path
    with engine.connect() as c:
        details = [json.loads(x) for x in c.execute(text(
            "SELECT details FROM audit_events WHERE event_type = 'instance.deleted'")).scalars()]
    assert sorted(det["training_copies_removed"] for det in details) == [4, 4]  # 2 PNGs + 2 cached views each
