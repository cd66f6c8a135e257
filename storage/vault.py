"""The encrypted object vault: every stored object under its own AES-256-GCM data key (envelope encryption).

File layout (one file per object, `{root}/{sha256(id)[:2]}/{id}.cxv`, mode 0600), header 160 bytes:

    0   4  magic b"CXRV"
    4   1  format version (1)
    5   1  flags (0)
    6   2  header length, big endian (160)
    8  16  KEK id (ASCII hex) that wraps the data key
    24 12  nonce of the wrapped data key
    36 48  data key wrapped by the KEK with AES-256-GCM (AD = object id + KEK id)
    84 12  nonce of the payload
    96 64  reserved, zero (so bytes 128..131 are never b"DICM", whatever the payload)
    160    payload ciphertext + 16-byte tag (AD = format + object id)

Why: the object id is in both associated data, so swapping two files fails authentication instead of
returning the other patient's image; the data key is wrapped separately so key rotation rewrites 76
bytes per object, not the object (`rewrap` overwrites that header region in place and fsyncs - a
single sector write, the usual trade-off of envelope encryption); a flipped bit anywhere fails the tag
and raises `TamperError` naming the object, never wrong plaintext.

Fast path for ingest: `reserve()` hands out the id of an EMPTY file created ahead of time by a
background thread, whose directory entry is already durable (one directory fsync per 64 files);
`put_reserved(id, data)` writes into it and fsyncs the file only. That takes the directory fsync out
of the C-STORE's critical path. An empty file is not an object: `get` says not found, listings skip it.
A crash mid-write leaves a partial file no database row points at; the daemon's orphan sweep
shreds it. Reserved files left over at start-up are reused.

Durability: `put` writes a temp file in the target directory, fsyncs it, renames it over the final
name and fsyncs the directory. Ingest can group-commit instead: `put(..., fsync=False)` for each
image of a batch, then one `sync(ids)` (fsyncs those files and each distinct directory once) before
the DB commit and the C-STORE response - or `put_many(items)`, which does temp-write, fsync, rename,
directory fsync for a whole batch. Until `sync` returns an object is not durable and must not be
acknowledged. Temp files left by a crash are removed by `recover()` at start-up.

Also here: `seal`/`open_sealed`, the small-blob form of the same AES-GCM used by the feature cache
and the re-identification map.
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.durable import fsync_path
from storage.errors import KeyringError, ObjectNotFoundError, TamperError, VaultError
from storage.keys import KEK_ID_LEN, Keyring

MAGIC = b"CXRV"
VERSION = 1
HEADER_LEN = 160
TAG_LEN = 16
SUFFIX = ".cxv"
_FIXED = struct.Struct(">4sBBH")  # magic, version, flags, header length
_KEK = slice(8, 24)
_WRAP_NONCE = slice(24, 36)
_WRAPPED = slice(36, 84)
_DATA_NONCE = slice(84, 96)
_RESERVED = slice(96, HEADER_LEN)
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SEAL_VERSION = 1


# ------------------------------------------------------------------------------------ sealed blobs


def seal(key: bytes, aad: bytes, data: bytes) -> bytes:
    """AES-256-GCM with a random nonce: version byte + nonce + ciphertext + tag."""
    nonce = secrets.token_bytes(12)
    return bytes([SEAL_VERSION]) + nonce + AESGCM(key).encrypt(nonce, data, aad)


def open_sealed(key: bytes, aad: bytes, blob: bytes, *, object_id: str = "sealed blob") -> bytes:
    """Inverse of `seal`; TamperError naming `object_id` if anything does not authenticate."""
    if len(blob) < 1 + 12 + TAG_LEN:
        raise TamperError(object_id, "truncated")
    if blob[0] != SEAL_VERSION:
        raise TamperError(object_id, f"unknown seal version {blob[0]}")
    try:
        return AESGCM(key).decrypt(blob[1:13], blob[13:], aad)
    except InvalidTag:
        raise TamperError(object_id) from None


# ------------------------------------------------------------------------------------------ helpers


def _data_aad(object_id: str) -> bytes:
    return MAGIC + bytes([VERSION]) + b"\x00obj\x00" + object_id.encode()


def _dek_aad(object_id: str, kek_id: str) -> bytes:
    return b"cxrd-dek\x00" + object_id.encode() + b"\x00" + kek_id.encode()


_CHUNK = 1 << 20  # plaintext bytes encrypted per update_into: bounded memory per writer thread
_MAX_PLAINTEXT = 2**31 - 17  # what AESGCM.decrypt (used by get) accepts, ciphertext and tag included


def _write_all(fd: int, parts: list[bytes | memoryview]) -> int:
    total = sum(len(p) for p in parts)
    written = os.writev(fd, parts)
    if written < total:  # rare short write: finish the rest plainly
        rest = memoryview(b"".join(bytes(p) for p in parts))[written:]
        while rest:
            n = os.write(fd, rest)
            rest = rest[n:]
    return total


class Vault:
    """Encrypted, atomic, tamper-evident object store under `root`, keyed by `keyring`. Thread-safe."""

    def __init__(self, root: str | os.PathLike, keyring: Keyring):
        self.root = Path(root)
        self._local = threading.local()
        self.keyring = keyring
        self._made_dirs: set[Path] = set()
        self._dir_lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._make_fanout()
        self._spare: list[str] = []
        self._spare_lock = threading.Lock()
        self._refilling = threading.Event()

    def _make_fanout(self) -> None:
        """Create the 256 fan-out directories once, so no put pays for a new directory's fsync."""
        made = False
        for i in range(256):
            d = self.root / f"{i:02x}"
            if not d.is_dir():
                d.mkdir(mode=0o700, exist_ok=True)
                made = True
            self._made_dirs.add(d)
        if made:
            fsync_path(self.root, directory=True)

    # -- naming
    def path(self, object_id: str) -> Path:
        """Where an object lives (the id is a pseudonym, never a patient attribute)."""
        if not isinstance(object_id, str) or not _ID_RE.fullmatch(object_id):
            raise VaultError("invalid vault object id (1-128 of A-Z a-z 0-9 . _ -, not starting with . _ -)")
        fan = hashlib.sha256(object_id.encode()).hexdigest()[:2]
        return self.root / fan / (object_id + SUFFIX)

    def _ensure_dir(self, d: Path) -> None:
        if d in self._made_dirs:
            return
        with self._dir_lock:
            if not d.exists():
                d.mkdir(mode=0o700, exist_ok=True)
                fsync_path(self.root, directory=True)  # the new directory entry must be durable too
            self._made_dirs.add(d)

    # -- encryption
    def _encrypt(self, object_id: str, data: bytes) -> tuple[bytes, bytes]:
        header, dek, data_nonce = self._new_header(object_id)
        return header, AESGCM(dek).encrypt(data_nonce, data, _data_aad(object_id))

    def _new_header(self, object_id: str) -> tuple[bytes, bytes, bytes]:
        """A fresh data key, wrapped by the primary KEK into the object's header: (header, dek, nonce)."""
        kek_id, kek = self.keyring.primary()
        dek = AESGCM.generate_key(bit_length=256)
        wrap_nonce, data_nonce = secrets.token_bytes(12), secrets.token_bytes(12)
        wrapped = AESGCM(kek).encrypt(wrap_nonce, dek, _dek_aad(object_id, kek_id))
        header = (_FIXED.pack(MAGIC, VERSION, 0, HEADER_LEN) + kek_id.encode() + wrap_nonce + wrapped
                  + data_nonce + bytes(HEADER_LEN - 96))
        return header, dek, data_nonce

    def _parse_header(self, object_id: str, header: bytes) -> str:
        if len(header) < HEADER_LEN:
            raise TamperError(object_id, "truncated")
        magic, version, flags, hlen = _FIXED.unpack_from(header)
        if magic != MAGIC:
            raise TamperError(object_id, "not a vault object")
        if version != VERSION or hlen != HEADER_LEN or flags != 0:
            raise TamperError(object_id, f"unsupported header (version {version})")
        if any(header[_RESERVED]):
            raise TamperError(object_id, "reserved header bytes changed")
        try:
            return header[_KEK].decode("ascii")
        except UnicodeDecodeError:
            raise TamperError(object_id, "malformed KEK id") from None

    def _unwrap(self, object_id: str, header: bytes) -> bytes:
        kek_id = self._parse_header(object_id, header)
        try:
            kek = self.keyring.kek(kek_id)
        except KeyringError:
            raise TamperError(object_id, f"KEK {kek_id} not in keyring") from None
        try:
            return AESGCM(kek).decrypt(header[_WRAP_NONCE], header[_WRAPPED], _dek_aad(object_id, kek_id))
        except InvalidTag:
            raise TamperError(object_id, "data key does not authenticate") from None

    # -- writing
    def _write_temp(self, object_id: str, data: bytes, fsync: bool) -> tuple[Path, Path, int]:
        final = self.path(object_id)
        self._ensure_dir(final.parent)
        header, body = self._encrypt(object_id, data)
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                n = _write_all(fd, [header, body])
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise VaultError(f"cannot write vault object {object_id}: {exc.strerror}") from None
        return tmp, final, n

    def put(self, object_id: str, data: bytes, *, fsync: bool = True) -> int:
        """Encrypt and store `data` atomically (replacing any object with that id); bytes written.

        With `fsync=False` the file is renamed into place but not yet durable: call `sync([ids])`
        before acknowledging it.
        """
        tmp, final, n = self._write_temp(object_id, data, fsync)
        try:
            os.replace(tmp, final)
            if fsync:
                fsync_path(final.parent, directory=True)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise VaultError(f"cannot write vault object {object_id}: {exc.strerror}") from None
        return n

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> list[int]:
        """Group commit: write and fsync every temp file, rename all, fsync each directory once."""
        staged = [self._write_temp(oid, data, True) for oid, data in items]
        try:
            for tmp, final, _ in staged:
                os.replace(tmp, final)
            for d in {final.parent for _, final, _ in staged}:
                fsync_path(d, directory=True)
        except OSError as exc:
            for tmp, _, _ in staged:
                tmp.unlink(missing_ok=True)
            raise VaultError(f"cannot write vault objects: {exc.strerror}") from None
        return [n for _, _, n in staged]

    # -- reserved files: the ingest fast path
    SPARE_LOW, SPARE_BATCH = 32, 64

    def reserve(self) -> str:
        """The id of an empty, durably created object file to fill with `put_reserved`."""
        with self._spare_lock:
            oid = self._spare.pop() if self._spare else None
            low = len(self._spare) < self.SPARE_LOW
        if low and not self._refilling.is_set():
            self._refilling.set()
            threading.Thread(target=self._refill_in_background, name="cxrd-vault-spares", daemon=True).start()
        return oid if oid is not None else self._create_spares(1)[0]

    def put_reserved(self, object_id: str, data: bytes | memoryview | Iterable[bytes | memoryview]) -> int:
        """Encrypt into a reserved (empty) file and fsync it; durable when this returns.

        `data` may be several buffers (e.g. a serialised DICOM header and the pixel data it came
        with): they are encrypted as one plaintext, in chunks through a reused per-thread buffer,
        so a large image is neither joined nor copied into fresh memory first (page faults on
        fresh megabytes cost more here than AES-GCM itself). The file is byte-for-byte what
        `put` writes for the joined plaintext. Returns the bytes written (header + ciphertext + tag).
        """
        parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        if sum(memoryview(part).nbytes for part in parts) > _MAX_PLAINTEXT:
            raise VaultError(f"vault object {object_id} would exceed the 2 GiB a vault object can hold")
        p = self.path(object_id)
        header, dek, nonce = self._new_header(object_id)
        enc = Cipher(algorithms.AES(dek), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(_data_aad(object_id))
        try:
            fd = os.open(p, os.O_WRONLY)
        except FileNotFoundError:
            raise VaultError(f"vault object {object_id} was not reserved") from None
        except OSError as exc:
            raise VaultError(f"cannot write vault object {object_id}: {exc.strerror}") from None
        try:
            if os.fstat(fd).st_size != 0:
                raise VaultError(f"vault object {object_id} is not an empty reservation")
            written = _write_all(fd, [header])
            out = self._chunk_buffer()
            for part in parts:
                view = memoryview(part).cast("B")
                for start in range(0, len(view), _CHUNK):
                    n = enc.update_into(view[start:start + _CHUNK], out)
                    written += _write_all(fd, [memoryview(out)[:n]])
            enc.finalize()
            written += _write_all(fd, [enc.tag])
            os.fsync(fd)
        except OSError as exc:
            raise VaultError(f"cannot write vault object {object_id}: {exc.strerror}") from None
        finally:
            os.close(fd)
        return written

    def _chunk_buffer(self) -> bytearray:
        buf = getattr(self._local, "chunk", None)
        if buf is None:
            buf = self._local.chunk = bytearray(_CHUNK + 16)
        return buf

    def _refill_in_background(self) -> None:
        try:
            self._create_spares(self.SPARE_BATCH)
        except (OSError, VaultError):
            pass  # disk trouble: reserve() falls back to creating one file at a time and reports it
        finally:
            self._refilling.clear()

    def _create_spares(self, n: int) -> list[str]:
        """Create n empty files wherever their ids hash to, then fsync each directory touched.

        The first directory fsync commits the filesystem journal for all of them, so the others
        are nearly free. Ids are never drawn until one hashes into a chosen directory: that costs
        hundreds of hash tries per id, CPU taken from the receive path's core."""
        made: list[tuple[Path, str]] = []
        try:
            for _ in range(n):
                oid = secrets.token_hex(16)
                p = self.path(oid)
                self._ensure_dir(p.parent)
                os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                made.append((p, oid))
            for d in {p.parent for p, _ in made}:
                fsync_path(d, directory=True)
        except OSError as exc:
            for p, _ in made:
                p.unlink(missing_ok=True)
            raise VaultError(f"cannot create vault files: {exc.strerror}") from None
        ids = [oid for _, oid in made]
        if n > 1:
            with self._spare_lock:
                self._spare.extend(ids)
        return ids

    def sync(self, object_ids: Iterable[str]) -> None:
        """Make objects written with `put(..., fsync=False)` durable: fsync files, then their dirs."""
        dirs: set[Path] = set()
        try:
            for oid in object_ids:
                p = self.path(oid)
                fsync_path(p)
                dirs.add(p.parent)
            for d in dirs:
                fsync_path(d, directory=True)
        except OSError as exc:
            raise VaultError(f"cannot sync vault objects: {exc.strerror}") from None

    # -- reading
    def get(self, object_id: str) -> bytes:
        """Decrypt an object; ObjectNotFoundError, or TamperError if it does not authenticate."""
        p = self.path(object_id)
        try:
            with open(p, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise ObjectNotFoundError(object_id) from None
        except OSError as exc:
            raise VaultError(f"cannot read vault object {object_id}: {exc.strerror}") from None
        try:
            return self._decrypt(object_id, raw)
        except TamperError:
            # A concurrent `rewrap` rewrites the 76-byte key region in place; a read that raced it
            # sees a mixed header. Read once more before calling it tampering.
            time.sleep(0.01)
            try:
                with open(p, "rb") as f:
                    raw = f.read()
            except OSError:
                raise ObjectNotFoundError(object_id) from None
            return self._decrypt(object_id, raw)

    def _decrypt(self, object_id: str, raw: bytes) -> bytes:
        if not raw:
            raise ObjectNotFoundError(object_id)  # a reservation never written: not an object
        if len(raw) < HEADER_LEN + TAG_LEN:
            raise TamperError(object_id, "truncated")
        dek = self._unwrap(object_id, raw[:HEADER_LEN])
        try:
            return AESGCM(dek).decrypt(raw[_DATA_NONCE], memoryview(raw)[HEADER_LEN:], _data_aad(object_id))
        except InvalidTag:
            raise TamperError(object_id, "payload does not authenticate") from None

    def exists(self, object_id: str) -> bool:
        try:
            return self.path(object_id).stat().st_size > 0  # an empty file is an unused reservation
        except FileNotFoundError:
            return False

    def object_ids(self) -> Iterator[str]:
        """Every stored object id (order unspecified)."""
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir():
                for f in sub.iterdir():
                    if f.name.endswith(SUFFIX) and not f.name.startswith("."):
                        try:
                            if f.stat().st_size == 0:
                                continue  # a reservation, not an object
                        except FileNotFoundError:
                            continue
                        yield f.name[: -len(SUFFIX)]

    # -- deleting
    def delete(self, object_id: str) -> bool:
        """Crypto-shred: overwrite the header (wrapped data key) with random bytes, fsync, unlink.

        Without its wrapped key the payload is undecryptable even if the blocks survive on disk.
        Returns False if there was no such object.
        """
        p = self.path(object_id)
        try:
            fd = os.open(p, os.O_WRONLY)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise VaultError(f"cannot delete vault object {object_id}: {exc.strerror}") from None
        try:
            os.pwrite(fd, secrets.token_bytes(HEADER_LEN), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        p.unlink(missing_ok=True)
        fsync_path(p.parent, directory=True)
        return True

    # -- keys
    def _read_header(self, p: Path) -> bytes:
        with open(p, "rb") as f:
            return f.read(HEADER_LEN)

    UNREADABLE = "unreadable"

    def kek_usage(self) -> Counter[str]:
        """How many objects each KEK id wraps (what `keys retire` checks); objects whose header
        cannot be parsed are counted under `Vault.UNREADABLE` instead of stopping the count."""
        usage: Counter[str] = Counter()
        for oid in self.object_ids():
            try:
                usage[self._parse_header(oid, self._read_header(self.path(oid)))] += 1
            except TamperError:
                usage[self.UNREADABLE] += 1
            except FileNotFoundError:
                continue
        return usage

    def rewrap(self, new_kek_id: str | None = None, *,
               on_error: Callable[[str, Exception], None] | None = None) -> int:
        """Re-wrap every data key not under `new_kek_id` (default: the primary); number re-wrapped.

        Payloads are untouched. A tampered object raises TamperError, or is passed to `on_error`
        (and skipped) when given, so one bad file does not stop a rotation.
        """
        target = new_kek_id or self.keyring.primary_id
        target_key = self.keyring.kek(target)
        count = 0
        for oid in list(self.object_ids()):
            p = self.path(oid)
            try:
                header = self._read_header(p)
                if self._parse_header(oid, header) == target:
                    continue
                dek = self._unwrap(oid, header)
                nonce = secrets.token_bytes(12)
                wrapped = AESGCM(target_key).encrypt(nonce, dek, _dek_aad(oid, target))
                region = target.encode() + nonce + wrapped
                assert len(region) == KEK_ID_LEN + 12 + 48
                fd = os.open(p, os.O_WRONLY)
                try:
                    os.pwrite(fd, region, _KEK.start)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                count += 1
            except FileNotFoundError:
                continue  # deleted meanwhile
            except TamperError as exc:
                if on_error is None:
                    raise
                on_error(oid, exc)
        return count

    # -- start-up
    def recover(self) -> int:
        """Remove temp files left by a crash mid-write (number removed) and take back empty
        reservations for reuse. Call before serving."""
        removed = 0
        spares = []
        for sub in self.root.iterdir():
            if sub.is_dir():
                for f in sub.iterdir():
                    if f.name.startswith(".") and f.name.endswith(".tmp"):
                        f.unlink(missing_ok=True)
                        removed += 1
                    elif f.name.endswith(SUFFIX) and f.stat().st_size == 0:
                        spares.append(f.name[: -len(SUFFIX)])
        with self._spare_lock:
            self._spare = spares
        return removed
