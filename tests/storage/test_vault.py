"""The encrypted vault: round trip, nothing in clear, tamper detection, rotation, crash leftovers."""
from __future__ import annotations

import io
import os
import shutil

import pydicom
import pytest

from storage import keys
from storage.errors import ObjectNotFoundError, TamperError, VaultError
from storage.vault import HEADER_LEN, Vault, open_sealed, seal

MARK = b"PHIMARK-DOE^JANE"


@pytest.fixture
def ring(tmp_path):
    kf, path = tmp_path / "keys" / "master.key", tmp_path / "keys" / "keyring.json"
    keys.init_keys(kf, path)
    return keys.load_keys(kf, path)


@pytest.fixture
def vault(tmp_path, ring):
    return Vault(tmp_path / "vault", ring.keyring)


@pytest.fixture(scope="module")
def dicom_bytes(shared_data) -> bytes:
    """A real radiograph with a planted patient name, as bytes (has DICM at offset 128)."""
    ds = pydicom.dcmread(shared_data / "dicom" / "derived" / "nih_00000001_000_explicit-vr-le.dcm")
    ds.PatientName = MARK.decode()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert buf.getvalue()[128:132] == b"DICM"
    return buf.getvalue()


def _files(root):
    return [p for p in root.rglob("*") if p.is_file()]


def test_round_trip_and_no_clear_dicom_or_phi_on_disk(vault, dicom_bytes):
    n = vault.put("2.25.1001", dicom_bytes)
    assert n == HEADER_LEN + len(dicom_bytes) + 16
    assert vault.get("2.25.1001") == dicom_bytes and vault.exists("2.25.1001")
    files = _files(vault.root)
    assert len(files) == 1 and oct(files[0].stat().st_mode)[-3:] == "600"
    raw = files[0].read_bytes()
    assert raw[128:132] != b"DICM" and raw[128:132] == bytes(4)
    assert MARK not in raw and b"DOE^JANE" not in raw and dicom_bytes[132:400] not in raw


@pytest.mark.parametrize("offset", [0, 10, 30, 60, 90, 120, HEADER_LEN + 5, -1], ids=lambda o: f"byte{o}")
def test_a_flipped_bit_anywhere_is_detected_and_names_the_object(vault, offset):
    vault.put("2.25.7", b"payload" * 1000)
    p = vault.path("2.25.7")
    raw = bytearray(p.read_bytes())
    raw[offset] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(TamperError, match=r"2\.25\.7"):
        vault.get("2.25.7")


def test_swapped_files_do_not_decrypt_as_the_other_object(vault):
    vault.put("2.25.1", b"image of patient one")
    vault.put("2.25.2", b"image of patient two")
    shutil.copyfile(vault.path("2.25.2"), vault.path("2.25.1"))
    with pytest.raises(TamperError) as err:
        vault.get("2.25.1")
    assert err.value.object_id == "2.25.1"
    assert vault.get("2.25.2") == b"image of patient two"


def test_truncated_file_and_wrong_key_are_detected(tmp_path, vault):
    vault.put("2.25.3", b"x" * 5000)
    p = vault.path("2.25.3")
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with pytest.raises(TamperError, match="2.25.3"):
        vault.get("2.25.3")
    p.write_bytes(data[:HEADER_LEN - 1])
    with pytest.raises(TamperError, match="truncated"):
        vault.get("2.25.3")
    p.write_bytes(data)
    kf, ring_path = tmp_path / "other" / "m.key", tmp_path / "other" / "ring.json"
    keys.init_keys(kf, ring_path)
    stranger = Vault(vault.root, keys.load_keys(kf, ring_path).keyring)
    with pytest.raises(TamperError, match="2.25.3"):
        stranger.get("2.25.3")


def test_missing_object_and_bad_ids_are_clear_errors(vault):
    with pytest.raises(ObjectNotFoundError, match="2.25.404"):
        vault.get("2.25.404")
    for bad in ("../etc/passwd", "", ".hidden", "a/b", "x" * 200):
        with pytest.raises(VaultError, match="invalid vault object id"):
            vault.put(bad, b"1")


def test_rotation_rewraps_every_object_and_old_kek_can_then_be_retired(vault, ring):
    payloads = {f"2.25.{i}": os.urandom(3000 + i) for i in range(12)}
    for oid, data in payloads.items():
        vault.put(oid, data)
    old = ring.keyring.primary_id
    headers_before = {oid: vault.path(oid).read_bytes()[HEADER_LEN:] for oid in payloads}
    new = ring.keyring.rotate()
    assert vault.kek_usage() == {old: 12}
    assert vault.rewrap() == 12
    assert vault.kek_usage() == {new: 12} and vault.rewrap() == 0
    ring.keyring.retire(old, vault.kek_usage().get(old, 0))
    for oid, data in payloads.items():
        assert vault.get(oid) == data
        assert vault.path(oid).read_bytes()[HEADER_LEN:] == headers_before[oid]  # payload untouched


def test_rewrap_reports_tampered_objects_without_stopping(vault, ring):
    for i in range(3):
        vault.put(f"2.25.{i}", b"data")
    p = vault.path("2.25.1")
    raw = bytearray(p.read_bytes())
    raw[40] ^= 0xFF
    p.write_bytes(bytes(raw))
    ring.keyring.rotate()
    bad = []
    assert vault.rewrap(on_error=lambda oid, exc: bad.append(oid)) == 2
    assert bad == ["2.25.1"]
    with pytest.raises(TamperError):
        vault.rewrap()
    p.write_bytes(b"garbage" * 40)
    assert vault.kek_usage()[Vault.UNREADABLE] == 1


def test_delete_shreds_the_wrapped_key_before_unlinking(vault, monkeypatch):
    vault.put("2.25.9", b"secret" * 100)
    seen = {}
    real_unlink = type(vault.path("2.25.9")).unlink

    def spy(self, missing_ok=False):
        seen["header"] = self.read_bytes()[:HEADER_LEN]
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(type(vault.path("2.25.9")), "unlink", spy)
    original_header = vault.path("2.25.9").read_bytes()[:HEADER_LEN]
    assert vault.delete("2.25.9") is True
    assert seen["header"] != original_header and seen["header"][:4] != b"CXRV"
    assert not vault.exists("2.25.9") and vault.delete("2.25.9") is False


def test_group_commit_and_recover_leftover_temp_files(vault):
    sizes = vault.put_many([(f"2.25.5{i}", bytes([i]) * 100) for i in range(5)])
    assert sizes == [HEADER_LEN + 116] * 5
    vault.put("2.25.60", b"later", fsync=False)
    vault.sync(["2.25.60"])
    assert vault.get("2.25.60") == b"later" and vault.get("2.25.53") == bytes([3]) * 100
    leftover = vault.path("2.25.60").with_name(".2.25.61.cxv.deadbeef.tmp")
    leftover.write_bytes(b"half written")
    assert vault.recover() == 1 and not leftover.exists()
    assert sorted(vault.object_ids()) == sorted([f"2.25.5{i}" for i in range(5)] + ["2.25.60"])


def test_seal_binds_associated_data_and_detects_tampering():
    key = os.urandom(32)
    blob = seal(key, b"features:2.25.1", MARK)
    assert MARK not in blob
    assert open_sealed(key, b"features:2.25.1", blob) == MARK
    with pytest.raises(TamperError):
        open_sealed(key, b"features:2.25.2", blob, object_id="features:2.25.2")
    with pytest.raises(TamperError):
        open_sealed(os.urandom(32), b"features:2.25.1", blob)
    with pytest.raises(TamperError):
        open_sealed(key, b"features:2.25.1", blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(TamperError, match="truncated"):
        open_sealed(key, b"x", blob[:10])


def test_reserved_files_are_not_objects_until_written_and_are_reused_after_restart(vault, ring, dicom_bytes):
    from storage.errors import ObjectNotFoundError
    oid = vault.reserve()
    assert vault.path(oid).exists() and vault.path(oid).stat().st_size == 0
    assert not vault.exists(oid) and oid not in set(vault.object_ids())
    with pytest.raises(ObjectNotFoundError):
        vault.get(oid)
    assert vault.put_reserved(oid, dicom_bytes) > len(dicom_bytes)
    assert vault.get(oid) == dicom_bytes and oid in set(vault.object_ids())
    with pytest.raises(VaultError, match="not an empty reservation"):
        vault.put_reserved(oid, b"again")  # never overwrites an object
    with pytest.raises(VaultError, match="was not reserved"):
        vault.put_reserved("never-reserved-id", b"x")
    assert b"DICM" not in vault.path(oid).read_bytes()[:200]
    import time
    while vault._refilling.is_set():  # let the background refill finish creating its files
        time.sleep(0.01)
    spares = {p.name for p in vault.root.rglob("*.cxv") if p.stat().st_size == 0}
    assert len(spares) >= Vault.SPARE_BATCH
    restarted = Vault(vault.root, ring)
    restarted.recover()
    assert {oid + ".cxv" for oid in restarted._spare} == spares  # handed out again, not leaked


def test_put_reserved_encrypts_several_buffers_as_one_object_across_chunk_boundaries(vault):
    """Ingest hands the serialised DICOM header and the pixel data as separate buffers; they must
    read back as one plaintext, in a file of exactly the layout `put` writes (header + ciphertext +
    tag), including when a buffer straddles the 1 MiB encryption chunks."""
    from storage import vault as V
    parts = [os.urandom(1000), memoryview(os.urandom(V._CHUNK + 333)), b"", os.urandom(V._CHUNK * 2 + 7)]
    plain = b"".join(bytes(p) for p in parts)
    oid = vault.reserve()
    written = vault.put_reserved(oid, parts)
    assert written == vault.path(oid).stat().st_size == V.HEADER_LEN + len(plain) + 16
    assert vault.get(oid) == plain
    assert vault.put("joined-" + oid, plain) == written


def test_put_reserved_refuses_what_get_could_not_decrypt(vault, monkeypatch):
    """AESGCM.decrypt takes at most 2 GiB; a larger object must be refused, not acknowledged."""
    from storage import vault as V
    monkeypatch.setattr(V, "_MAX_PLAINTEXT", 1000)
    oid = vault.reserve()
    with pytest.raises(VaultError, match="2 GiB"):
        vault.put_reserved(oid, [b"x" * 600, b"y" * 600])
    assert vault.path(oid).stat().st_size == 0  # nothing written; the reservation is still empty
