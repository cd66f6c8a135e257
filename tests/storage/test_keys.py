"""Master key file, derived purpose keys and the KEK keyring."""
from __future__ import annotations

import os
import stat

import pytest

from storage import keys
from storage.errors import KeyFileError, KeyringError


@pytest.fixture
def key_paths(tmp_path):
    kf, ring = tmp_path / "keys" / "master.key", tmp_path / "keys" / "keyring.json"
    keys.init_keys(kf, ring)
    return kf, ring


def test_key_file_is_created_private_once_and_kept(tmp_path):
    kf = tmp_path / "k" / "master.key"
    assert keys.create_key_file(kf) is True
    assert stat.S_IMODE(kf.stat().st_mode) == 0o600
    assert stat.S_IMODE(kf.parent.stat().st_mode) == 0o700
    first = kf.read_bytes()
    assert len(first) == 40 and first.startswith(keys.MASTER_MAGIC)
    assert keys.create_key_file(kf) is False and kf.read_bytes() == first  # idempotent, never overwritten


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_group_or_world_accessible_key_file_is_refused(tmp_path, mode):
    kf = tmp_path / "master.key"
    keys.create_key_file(kf)
    os.chmod(kf, mode)
    with pytest.raises(KeyFileError, match="group or others"):
        keys.read_master_key(kf)


def test_missing_and_malformed_key_files_are_clear_errors(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        keys.read_master_key(tmp_path / "nope.key")
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"x" * 40)
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="not a cxrd master key"):
        keys.read_master_key(bad)


def test_systemd_credential_file_is_loaded_like_a_key_file(tmp_path, key_paths):
    kf, ring = key_paths
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "cxrd.key").write_bytes(kf.read_bytes())
    os.chmod(creds / "cxrd.key", 0o400)
    a, b = keys.load_keys(kf, ring), keys.load_keys(creds / "cxrd.key", ring)
    assert a.uid_key == b.uid_key and a.audit_key == b.audit_key


def test_purpose_keys_are_distinct_and_survive_rotation(key_paths):
    kf, ring = key_paths
    k = keys.load_keys(kf, ring)
    subkeys = [k.uid_key, k.date_key, k.audit_key, k.reid_key]
    assert len(set(subkeys)) == 4 and all(len(x) == 32 for x in subkeys)
    old_primary = k.keyring.primary_id
    new_primary = k.keyring.rotate()
    again = keys.load_keys(kf, ring)
    assert [again.uid_key, again.date_key, again.audit_key, again.reid_key] == subkeys
    assert again.keyring.primary_id == new_primary != old_primary
    assert k.keyring.kek(old_primary) == again.keyring.kek(old_primary)
    assert "uid_key" not in repr(k) and k.uid_key.hex() not in repr(k)


def test_keyring_of_another_master_key_or_edited_is_refused(tmp_path, key_paths):
    kf, ring = key_paths
    other = tmp_path / "other.key"
    keys.create_key_file(other)
    with pytest.raises(KeyFileError, match="integrity"):
        keys.load_keys(other, ring)
    text = ring.read_text()
    primary = keys.load_keys(kf, ring).keyring.primary_id
    ring.write_text(text.replace(f'"primary": "{primary}"', '"primary": "0000000000000000"'))
    with pytest.raises(KeyFileError, match="integrity"):
        keys.load_keys(kf, ring)


def test_retire_refuses_primary_and_used_keks_then_shreds(key_paths):
    kf, ring = key_paths
    k = keys.load_keys(kf, ring)
    old = k.keyring.primary_id
    with pytest.raises(KeyringError, match="primary"):
        k.keyring.retire(old, 0)
    k.keyring.rotate()
    with pytest.raises(KeyringError, match="still wraps 3"):
        k.keyring.retire(old, 3)
    k.keyring.retire(old, 0)
    doc = __import__("json").loads(ring.read_text())
    assert "sealed" not in next(e for e in doc["keks"] if e["id"] == old)  # material shredded
    with pytest.raises(KeyringError):
        keys.load_keys(kf, ring).keyring.kek(old)
    entry = next(e for e in k.keyring.describe() if e["id"] == old)
    assert entry["state"] == "retired"
    with pytest.raises(KeyringError, match="already retired"):
        k.keyring.retire(old, 0)


def test_a_running_process_sees_a_rotation_made_by_another(key_paths):
    kf, ring = key_paths
    daemon_view = keys.load_keys(kf, ring).keyring
    cli_view = keys.load_keys(kf, ring).keyring
    new = cli_view.rotate()
    assert daemon_view.primary()[0] == new
