"""Keys: one master key on disk, purpose sub-keys derived from it, and a keyring of KEKs for the vault.

Why this shape:
- The master key is the only secret an operator has to protect (a 0600 file, or a systemd credential).
  Everything else is derived from it with HKDF, one sub-key per purpose, so that a key used to
  pseudonymize UIDs can never be confused with one that chains the audit log or seals the
  re-identification map.
- Pseudonym, date, audit and re-identification keys are *derived*, hence never rotate: rotating them
  would break linkage of a patient's studies, the audit chain and every sealed re-identification entry.
- Vault objects are wrapped by key-encryption keys (KEKs) that *can* rotate. KEKs are random, kept in a
  keyring file beside the state (each KEK sealed under the derived "kek-wrap" key, the whole file MACed),
  so `cxrd keys rotate` adds a new primary KEK and re-wraps data keys, and `cxrd keys retire ID` shreds
  an old KEK once no object uses it.
- A running daemon notices a keyring replaced by the CLI (a cheap stat check per use) and reloads it,
  so it never wraps new objects under a KEK that was retired behind its back.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage.durable import fsync_path
from storage.errors import KeyFileError, KeyringError

MASTER_MAGIC = b"CXRDMK\x00\x01"  # 6 bytes name, 1 reserved, 1 format version
KEY_LEN = 32
KEK_ID_LEN = 16  # hex characters; fixed so the vault header has a fixed size
_HKDF_SALT = b"cxrd/hkdf/v1"
KEYRING_FORMAT = "cxrd-keyring"
KEYRING_VERSION = 1


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------- files


def _write_private_atomic(path: Path, data: bytes) -> None:
    """Write a 0600 file atomically (temp in the same dir, fsync, rename, fsync dir)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_path(path.parent, directory=True)


def _read_private(path: Path, what: str) -> bytes:
    """Read a secret file, refusing one that others could read or write."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist (run `cxrd init`)") from None
    except OSError as exc:
        raise KeyFileError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{what} {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(f"{what} {path} is accessible by group or others "
                           f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{what} {path} cannot be read: {exc.strerror}") from None


def create_key_file(path: str | os.PathLike) -> bool:
    """Create the master key file (32 random bytes, versioned, mode 0600); True if it was created.

    Idempotent for `cxrd init`: an existing valid file is kept (overwriting it would lose every
    sealed object); an existing invalid one is an error.
    """
    path = Path(path)
    if path.exists():
        read_master_key(path)
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another `cxrd init` won the race
        read_master_key(path)
        return False
    try:
        os.write(fd, MASTER_MAGIC + secrets.token_bytes(KEY_LEN))
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_path(path.parent, directory=True)
    return True


def read_master_key(path: str | os.PathLike) -> bytes:
    """The 32-byte master key from a key file or a systemd credential file."""
    path = Path(path)
    raw = _read_private(path, "key file")
    if len(raw) != len(MASTER_MAGIC) + KEY_LEN or not raw.startswith(MASTER_MAGIC[:6]):
        raise KeyFileError(f"key file {path} is not a cxrd master key file")
    if raw[: len(MASTER_MAGIC)] != MASTER_MAGIC:
        raise KeyFileError(f"key file {path} has unsupported format version {raw[7]}")
    return raw[len(MASTER_MAGIC):]


def derive_key(master: bytes, purpose: str) -> bytes:
    """HKDF-SHA256 sub-key for one purpose; the same master and purpose always give the same key."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=_HKDF_SALT,
                info=b"cxrd/v1/" + purpose.encode()).derive(master)


# -------------------------------------------------------------------------------------------- keyring


def _kek_aad(kek_id: str) -> bytes:
    return b"cxrd-kek\x00" + kek_id.encode()


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in doc.items() if k != "mac"}, sort_keys=True,
                      separators=(",", ":")).encode()


class Keyring:
    """The KEKs by id and which one is primary, backed by a MACed file; thread-safe."""

    def __init__(self, path: Path, wrap_key: bytes, mac_key: bytes):
        self.path = Path(path)
        self._wrap = AESGCM(wrap_key)
        self._mac_key = mac_key
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._doc: dict[str, Any] = {}
        self._keks: dict[str, bytes] = {}
        self._reload()

    # -- reading
    def _file_stamp(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload(self) -> None:
        raw = _read_private(self.path, "keyring")
        try:
            doc = json.loads(raw)
            if doc.get("format") != KEYRING_FORMAT:
                raise ValueError
        except (ValueError, AttributeError):
            raise KeyFileError(f"keyring {self.path} is not a cxrd keyring") from None
        if doc.get("version") != KEYRING_VERSION:
            raise KeyFileError(f"keyring {self.path} has unsupported version {doc.get('version')!r}")
        mac = hmac.new(self._mac_key, _canonical(doc), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, str(doc.get("mac", ""))):
            raise KeyFileError(f"keyring {self.path} failed its integrity check "
                               "(modified, or belongs to another master key)")
        keks: dict[str, bytes] = {}
        for entry in doc["keks"]:
            if entry.get("state") != "active":
                continue
            blob = base64.b64decode(entry["sealed"])
            try:
                keks[entry["id"]] = self._wrap.decrypt(blob[:12], blob[12:], _kek_aad(entry["id"]))
            except InvalidTag:
                raise KeyFileError(f"keyring {self.path}: KEK {entry['id']} cannot be unsealed") from None
        if doc.get("primary") not in keks:
            raise KeyFileError(f"keyring {self.path} has no usable primary KEK")
        self._doc, self._keks = doc, keks
        self._stamp = self._file_stamp()

    def _fresh(self) -> None:
        """Reload if the file was replaced (e.g. by `cxrd keys rotate` in another process)."""
        try:
            stamp = self._file_stamp()
        except OSError:
            return  # keep what we have; the next successful stat reloads
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._reload()

    @property
    def primary_id(self) -> str:
        self._fresh()
        return self._doc["primary"]

    def primary(self) -> tuple[str, bytes]:
        """The id and key material of the KEK that wraps new data keys."""
        self._fresh()
        doc, keks = self._doc, self._keks
        return doc["primary"], keks[doc["primary"]]

    def kek(self, kek_id: str) -> bytes:
        """Key material of an active KEK; KeyringError if unknown or retired."""
        self._fresh()
        try:
            return self._keks[kek_id]
        except KeyError:
            raise KeyringError(f"KEK {kek_id} is not in the keyring (unknown or retired)") from None

    def describe(self) -> list[dict[str, Any]]:
        """Public facts about every KEK (never key material), oldest first."""
        self._fresh()
        return [{"id": e["id"], "state": e["state"], "created": e.get("created", ""),
                 "retired": e.get("retired", ""), "primary": e["id"] == self._doc["primary"]}
                for e in self._doc["keks"]]

    # -- changing
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                self._reload()
                yield
        finally:
            os.close(fd)

    def _save(self, doc: dict[str, Any]) -> None:
        doc["mac"] = hmac.new(self._mac_key, _canonical(doc), hashlib.sha256).hexdigest()
        _write_private_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True).encode())
        self._reload()

    def _new_entry(self) -> dict[str, Any]:
        kek_id = secrets.token_hex(KEK_ID_LEN // 2)
        nonce = secrets.token_bytes(12)
        sealed = nonce + self._wrap.encrypt(nonce, secrets.token_bytes(KEY_LEN), _kek_aad(kek_id))
        return {"id": kek_id, "state": "active", "created": _now(),
                "sealed": base64.b64encode(sealed).decode()}

    def rotate(self) -> str:
        """Add a new KEK and make it primary; return its id. Callers then re-wrap the vault."""
        with self._exclusive():
            doc = json.loads(json.dumps(self._doc))
            entry = self._new_entry()
            doc["keks"].append(entry)
            doc["primary"] = entry["id"]
            self._save(doc)
            return entry["id"]

    def retire(self, kek_id: str, objects_using_it: int) -> None:
        """Shred a KEK's material; refused for the primary or while any object still uses it.

        `objects_using_it` comes from `Vault.kek_usage()` - the keyring cannot see the vault.
        """
        with self._exclusive():
            doc = json.loads(json.dumps(self._doc))
            entry = next((e for e in doc["keks"] if e["id"] == kek_id), None)
            if entry is None:
                raise KeyringError(f"KEK {kek_id} is not in the keyring")
            if entry["state"] != "active":
                raise KeyringError(f"KEK {kek_id} is already retired")
            if kek_id == doc["primary"]:
                raise KeyringError(f"KEK {kek_id} is the primary KEK; rotate first")
            if objects_using_it:
                raise KeyringError(f"KEK {kek_id} still wraps {objects_using_it} vault object(s); "
                                   "run `cxrd keys rotate` (re-wraps them) first")
            entry.update(state="retired", retired=_now())
            entry.pop("sealed", None)
            self._save(doc)


def create_keyring(key_file: str | os.PathLike, keyring_file: str | os.PathLike) -> bool:
    """Create the keyring with one primary KEK if it does not exist; True if created."""
    keyring_file = Path(keyring_file)
    master = read_master_key(key_file)
    if keyring_file.exists():
        _open_keyring(master, keyring_file)  # validates
        return False
    wrap = AESGCM(derive_key(master, "kek-wrap"))
    kek_id = secrets.token_hex(KEK_ID_LEN // 2)
    nonce = secrets.token_bytes(12)
    sealed = nonce + wrap.encrypt(nonce, secrets.token_bytes(KEY_LEN), _kek_aad(kek_id))
    doc: dict[str, Any] = {"format": KEYRING_FORMAT, "version": KEYRING_VERSION, "primary": kek_id,
                           "keks": [{"id": kek_id, "state": "active", "created": _now(),
                                     "sealed": base64.b64encode(sealed).decode()}]}
    doc["mac"] = hmac.new(derive_key(master, "keyring-mac"), _canonical(doc), hashlib.sha256).hexdigest()
    _write_private_atomic(keyring_file, json.dumps(doc, indent=1, sort_keys=True).encode())
    return True


def _open_keyring(master: bytes, keyring_file: Path) -> Keyring:
    return Keyring(keyring_file, derive_key(master, "kek-wrap"), derive_key(master, "keyring-mac"))


def init_keys(key_file: str | os.PathLike, keyring_file: str | os.PathLike) -> dict[str, bool]:
    """What `cxrd init` calls: create master key and keyring when missing (idempotent).

    With a systemd credential the key file already exists (read-only); only the keyring is created.
    """
    created_key = create_key_file(key_file)
    created_ring = create_keyring(key_file, keyring_file)
    return {"key_file_created": created_key, "keyring_created": created_ring}


@dataclass(frozen=True)
class DeidKeys:
    """The two keys de-identification needs: UID/patient pseudonyms and per-patient date offsets."""
    uid_key: bytes
    date_key: bytes


@dataclass(frozen=True)
class Keys:
    """Every key cxrd uses, by purpose. Only `keyring` changes on rotation."""
    uid_key: bytes
    date_key: bytes
    audit_key: bytes
    reid_key: bytes
    keyring: Keyring
    record_key: bytes  # authenticates prediction rows (storage.records): a report is built only from ours

    @property
    def deid(self) -> DeidKeys:
        return DeidKeys(self.uid_key, self.date_key)

    def __repr__(self) -> str:  # never print key material
        return f"Keys(keyring={str(self.keyring.path)!r})"


def default_keyring_path(key_file: str | os.PathLike) -> Path:
    return Path(key_file).with_name("keyring.json")


def load_keys(key_file: str | os.PathLike, keyring_file: str | os.PathLike | None = None) -> Keys:
    """Load the master key and keyring; KeyFileError with one line if anything is wrong.

    `keyring_file` defaults to `keyring.json` beside the key file; pass `{state_dir}/keys/keyring.json`
    when the key is a systemd credential (its directory is read-only).
    """
    master = read_master_key(key_file)
    ring_path = Path(keyring_file) if keyring_file else default_keyring_path(key_file)
    return Keys(uid_key=derive_key(master, "uid-pseudonym"), date_key=derive_key(master, "date-shift"),
                audit_key=derive_key(master, "audit-chain"), reid_key=derive_key(master, "reid-map"),
                keyring=_open_keyring(master, ring_path), record_key=derive_key(master, "prediction-rows"))
