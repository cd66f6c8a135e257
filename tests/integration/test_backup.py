"""A tested restore: back up a running daemon's state, lose it, restore into a new directory with the
key kept elsewhere, and find every acknowledged image decrypting and the audit chain intact."""
from __future__ import annotations

import io
import json
import shutil

import pydicom
from sqlalchemy import create_engine, select

from conftest import copy_with_new_uids, storescu
from storage.keys import load_keys
from storage.models import Instance
from storage.vault import Vault


def test_backup_while_running_then_restore_elsewhere_verifies_everything(daemon_factory, shared_data, tmp_path):
    d = daemon_factory().start()
    files = copy_with_new_uids(shared_data / "dicom/derived/nih_00000001_000_explicit-vr-le.dcm", tmp_path / "in", 5)
    assert storescu(d.dicom_port, *files)[1] == ["Success"] * 5
    backup_dir = tmp_path / "backup"
    r = d.cli("backup", str(backup_dir), "--format", "json")
    assert r.returncode == 0, r.stderr
    manifest = json.loads(r.stdout)
    assert manifest["instances"] == 5 and manifest["vault_objects"] == 5 and not manifest["master_key_included"]
    assert not (backup_dir / "keys" / "master.key").exists()
    assert d.cli("backup", str(backup_dir)).returncode == 1  # never over an existing backup
    assert d.stop() == 0

    # The disk is lost; the key was kept elsewhere (as the README says).
    kept_key = tmp_path / "kept-master.key"
    shutil.copy2(d.state_dir / "keys" / "master.key", kept_key)
    shutil.rmtree(d.state_dir)
    new_state = tmp_path / "new-state"
    restored = daemon_factory(state_dir=new_state)
    r = restored.cli("restore", str(backup_dir))
    assert r.returncode == 1 and "master key not found" in r.stderr
    (new_state / "keys").mkdir(parents=True)
    shutil.copy2(kept_key, new_state / "keys" / "master.key")
    r = restored.cli("restore", str(backup_dir))
    assert r.returncode == 0, r.stderr
    assert "restored 5 instances" in r.stdout
    assert restored.cli("audit", "verify").returncode == 0

    keys = load_keys(new_state / "keys" / "master.key", new_state / "keys" / "keyring.json")
    vault = Vault(new_state / "vault", keys.keyring)
    engine = create_engine(f"sqlite:///{new_state / 'cxrd.db'}")
    with engine.connect() as c:
        objects = list(c.execute(select(Instance.vault_object)).scalars())
    assert len(objects) == 5
    for oid in objects:
        assert pydicom.dcmread(io.BytesIO(vault.get(oid))).PatientIdentityRemoved in ("YES", "NO")
    # The restored daemon serves and accepts the rest of the push.
    restored.start()
    assert storescu(restored.dicom_port, *files)[1] == ["Success"] * 5  # duplicates: already stored
    assert restored.cli("restore", str(backup_dir)).returncode == 1  # never over a live state dir


def test_restore_refuses_a_backup_whose_audit_rows_were_cut(daemon_factory, shared_data, tmp_path):
    d = daemon_factory().start()
    assert storescu(d.dicom_port, shared_data / "dicom/derived/nih_00000001_000_explicit-vr-le.dcm")[1] == ["Success"]
    assert d.cli("backup", str(tmp_path / "b"), "--include-master-key").returncode == 0
    assert d.stop() == 0
    import sqlite3
    c = sqlite3.connect(tmp_path / "b" / "cxrd.db")
    with c:
        c.execute("DELETE FROM audit_events WHERE seq = (SELECT max(seq) FROM audit_events)")
    c.close()
    r = daemon_factory(state_dir=tmp_path / "elsewhere").cli("restore", str(tmp_path / "b"))
    assert r.returncode == 1 and "audit chain does not verify" in r.stderr
