"""A fuzz campaign against a real `cxrd serve`, bounded in count and time, on loopback only.

What is sent (seeded, so a failure names a case that can be replayed: `DICOM_FUZZ_SEED`, case index):
- PDUs before any association: oversized length fields of every PDU type, truncated and random
  PDUs, and A-ASSOCIATE-RQs whose item lengths are absurd (each item's length field mutated).
- P-DATA-TFs on accepted associations whose PDV items lie about their lengths, name contexts that
  were not accepted, or carry garbage command sets.
- Thousands of mutated versions of the real DICOM files in ../shared/data/dicom/, pushed over a few
  reused associations: byte flips in the structure (everything before the pixel values, the Pixel
  Data element's header and its item headers), length fields set to interesting values, VRs
  replaced, elements duplicated, deleted or moved, garbage inserted, the data set cut short. Pixel
  values themselves are not flipped: any byte is a valid pixel value, so that finds nothing.
- Deflate bombs (a few hundred KB inflating to 1 GiB), pixel-budget bombs (real JPEG 2000 and JPEG
  headers declaring 65535 x 65535, or 65535 frames), sequences nested thousands of levels deep.

What must hold, during and after (a storescu push of a real radiograph runs in parallel throughout):
- the daemon is alive, and its peak resident set (VmHWM) grows by less than `RSS_GROWTH_BOUND_KIB`;
- every parallel push is acknowledged (Success) and stored;
- every malformed input got a failure status, an A-ABORT or a dropped connection; a mutated data set
  answered 0x0000 must be a complete valid image (checked independently with pydicom, and a sample
  decoded in full);
- nothing was stored half-way: vault objects = instance rows = acknowledged stores;
- no traceback and no planted patient data appear in the log.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import generate_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, UID
from sqlalchemy import create_engine, text

import raw_scu
from conftest import copy_with_new_uids, storescu

SEED = int(os.environ.get("DICOM_FUZZ_SEED", "16016"))
MUTATED_CASES = int(os.environ.get("DICOM_FUZZ_CASES", "2400"))
TIME_BUDGET_S = float(os.environ.get("DICOM_FUZZ_SECONDS", "120"))  # for the mutated data sets
MAX_DATASET_BYTES = 32 * 1024 * 1024
# The daemon's peak resident set may grow by at most this while it is fuzzed: a few associations'
# data sets (each bounded by MAX_DATASET_BYTES) and their processing, far below what the bombs announce.
RSS_GROWTH_BOUND_KIB = 384 * 1024
MARKER = "PHIMARK"  # planted as patient name and ID in every data set sent: must never reach the log
PUSH_IMAGE = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"
UID_LENGTH = 58  # every base file's SOP Instance UID is rewritten to this length, then per case
FAILED = "failed"  # a status that is not 0x0000, or an abort, or a dropped connection
_EXPLICIT_32 = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}


@dataclass
class Base:
    """One real file, re-encoded with planted markers, as the bytes a C-STORE carries."""
    name: str
    sop_class: str
    syntax: str
    body: bytes
    elements: list[tuple[int, int, int]]  # (tag, start, end) of each top-level element in body
    uid_at: int                            # offset of the SOP Instance UID value in body
    structure_end: int                     # bytes before it are structure (see module docstring)

    @property
    def implicit(self) -> bool:
        return UID(self.syntax).is_implicit_VR


def corpus(shared_data: Path) -> list[Base]:
    bases = []
    for path in sorted((shared_data / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path, force=True)
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "")
                     or ("1.2.840.10008.1.2" if ds.original_encoding[0] else ExplicitVRLittleEndian))
        if UID(syntax).is_deflated or not UID(syntax).is_little_endian:
            continue
        ds.PatientName, ds.PatientID = f"{MARKER}^Fuzz", f"{MARKER}-ID"
        ds.SOPInstanceUID = "2.25." + "1" * (UID_LENGTH - 5)
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, UID(syntax).is_implicit_VR
        write_dataset(buf, ds)
        body = buf.getvalue()
        elements = top_level_elements(body, UID(syntax).is_implicit_VR)
        uid_at = next(s for t, s, _ in elements if t == 0x00080018) + (8 if UID(syntax).is_implicit_VR else 8)
        assert body[uid_at:uid_at + UID_LENGTH] == ds.SOPInstanceUID.encode()
        pixel = next((s for t, s, _ in elements if t == 0x7FE00010), len(body))
        structure_end = min(len(body), pixel + 12 + (64 if UID(syntax).is_compressed else 0))
        bases.append(Base(path.name, str(ds.SOPClassUID), syntax, body, elements, uid_at, structure_end))
    return bases


def _element_end(body: bytes, at: int, implicit: bool) -> int:
    """Where the element starting at `at` ends (undefined lengths followed to their delimiter)."""
    if implicit or body[at + 4:at + 6] not in _EXPLICIT_32:
        header = 8
        length = struct.unpack_from("<L" if implicit else "<H", body, at + (4 if implicit else 6))[0]
    else:
        header, length = 12, struct.unpack_from("<L", body, at + 8)[0]
    if length != 0xFFFFFFFF:
        return at + header + length
    at += header
    while True:  # items, then the sequence delimiter
        tag, item_length = struct.unpack_from("<LL", body, at)
        if tag == 0xE0DDFFFE:
            return at + 8
        if item_length != 0xFFFFFFFF:
            at += 8 + item_length
            continue
        at += 8
        while struct.unpack_from("<L", body, at)[0] != 0xE00DFFFE:
            at = _element_end(body, at, implicit)
        at += 8


def top_level_elements(body: bytes, implicit: bool) -> list[tuple[int, int, int]]:
    out, at = [], 0
    while at < len(body):
        group, elem = struct.unpack_from("<HH", body, at)
        end = _element_end(body, at, implicit)
        out.append(((group << 16) | elem, at, end))
        at = end
    return out


# -- the mutator ----------------------------------------------------------------------------------
_INTERESTING = (0, 1, 2, 3, 7, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF, 0x10000, 0x7FFFFFFF,
                0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
_VRS = (b"SQ", b"UN", b"OB", b"OW", b"US", b"UL", b"FD", b"AT", b"UI", b"PN", b"XX", b"\0\0", b"UT")


def case_uid(index: int) -> str:
    digits = f"{SEED}{index:07d}"
    return "2.25.9" + digits.rjust(UID_LENGTH - 6, "7")


def mutate(base: Base, index: int) -> tuple[bytes, list[str]]:
    """The data set of case `index` (deterministic in SEED and index) and the names of its mutations."""
    rng = random.Random(SEED * 1_000_003 + index)
    body = bytearray(base.body)
    body[base.uid_at:base.uid_at + UID_LENGTH] = case_uid(index).encode()
    applied = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        if len(body) < 16:
            break
        kind = rng.choice(("flip", "flip", "length", "length", "vr", "duplicate", "delete", "move",
                           "insert", "truncate"))
        applied.append(kind)
        tag, start, end = rng.choice(base.elements)
        explicit = not base.implicit
        if kind == "flip":
            at = rng.randrange(min(base.structure_end, len(body)))
            body[at] ^= rng.randrange(1, 256)
        elif kind == "length":
            value = rng.choice(_INTERESTING + (end - start, end - start + 1, rng.randrange(1 << 32)))
            if explicit and bytes(body[start + 4:start + 6]) not in _EXPLICIT_32:
                body[start + 6:start + 8] = struct.pack("<H", value & 0xFFFF)
            else:
                at = start + (8 if explicit else 4)
                body[at:at + 4] = struct.pack("<L", value & 0xFFFFFFFF)
        elif kind == "vr" and explicit:
            body[start + 4:start + 6] = rng.choice(_VRS)
        elif kind == "duplicate":
            chunk = bytes(body[start:min(end, start + 4096)]) if tag != 0x7FE00010 else bytes(body[start:start + 12])
            body[start:start] = chunk
        elif kind == "delete" and tag != 0x7FE00010:
            del body[start:end]
        elif kind == "move" and tag != 0x7FE00010:
            chunk = bytes(body[start:end])
            del body[start:end]
            body[0:0] = chunk  # out of order: before every other element
        elif kind == "insert":
            body[start:start] = rng.randbytes(rng.randrange(1, 64))
        elif kind == "truncate":
            body = body[:rng.randrange(len(body))]
    return bytes(body), applied


# -- an independent judge of what was answered 0x0000 --------------------------------------------
def valid_image(data: bytes, base: Base, decode: bool) -> str | None:
    """Why `data` is not a complete valid image (None if it is), checked with pydicom alone."""
    try:
        ds = read_dataset(BytesIO(data), base.implicit, True)
        for elem in ds.iterall():
            _ = elem.value
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = base.syntax
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames, spp = int(ds.get("NumberOfFrames", 1) or 1), int(ds.SamplesPerPixel)
        bits = int(ds.BitsAllocated)
        if min(rows, cols, frames, spp, bits) < 1:
            return "non-positive image dimensions"
        raw = ds.get_item(0x7FE00010)
        if UID(base.syntax).is_compressed:
            fragments = list(generate_fragments(ds.PixelData))
            if not fragments:
                return "no pixel data fragments"
        else:
            expected = rows * cols * frames * spp * ((bits + 7) // 8)
            if len(ds.PixelData) not in (expected, expected + 1):
                return f"native pixel data of {len(ds.PixelData)} bytes for {expected}"
        if decode:
            ds.pixel_array  # noqa: B018 - decodes every frame
        del raw
    except Exception as exc:  # noqa: BLE001 - any failure to read it makes it invalid
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    return None


def fails_analysis_cleanly(data: bytes, base: Base) -> bool:
    """A compressed image whose structure and codestream header are sound but whose coded data is
    corrupt: ingest acknowledges it (nothing short of decoding every frame, which ingest does not do,
    can tell; README "Threat model"), and the worker must then fail it with a clear reason. True when
    that is the case: structurally valid, and the worker's own loader refuses it as undecodable."""
    from cxrmodel.errors import ImageError
    from cxrmodel.preprocess import load_image
    if not UID(base.syntax).is_compressed or valid_image(data, base, decode=False) is not None:
        return False
    ds = read_dataset(BytesIO(data), base.implicit, True)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = base.syntax
    try:
        load_image(ds)
    except ImageError as exc:
        return str(exc).startswith("cannot decode pixel data")
    return False


# -- the daemon side ------------------------------------------------------------------------------
def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def answered(sock: socket.socket, seconds: float) -> bool:
    """True once the daemon answered (anything) and closed, or closed; False if still open."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        if not chunk:
            return True
        if chunk[:1] == b"\x02":  # accepted after all (a mutation that kept the request valid)
            try:
                sock.sendall(raw_scu.pdu(0x05, bytes(4)))
            except OSError:
                return True
    return False


def preassociation_attacks(rng: random.Random) -> list[bytes]:
    attacks = []
    for pdu_type in range(1, 8):
        for length in (0xFFFFFFFF, 0x80000000, 0x01000000, 65537):
            attacks.append(struct.pack(">BBL", pdu_type, 0, length) + rng.randbytes(rng.randrange(0, 32)))
        n = rng.randrange(1, 2048)
        attacks.append(struct.pack(">BBL", pdu_type, 0, n + 100) + rng.randbytes(n))  # truncated
        attacks.append(struct.pack(">BBL", pdu_type, 0, n) + rng.randbytes(n))       # random body
    attacks += [rng.randbytes(rng.randrange(1, 512)) for _ in range(20)]
    valid = raw_scu.associate_rq("CXRD", "FUZZER", [("1.2.840.10008.1.1", ["1.2.840.10008.1.2"]),
                                                      ("1.2.840.10008.5.1.4.1.1.1.1", [ExplicitVRLittleEndian])])
    item_at = [i for i in range(74, len(valid) - 4) if valid[i] in (0x10, 0x20, 0x30, 0x40, 0x50, 0x51, 0x52)
               and valid[i + 1] == 0]
    for _ in range(60):  # A-ASSOCIATE-RQ with absurd item lengths
        body = bytearray(valid)
        at = rng.choice(item_at)
        body[at + 2:at + 4] = struct.pack(">H", rng.choice((0, 1, 3, 0x7FFF, 0xFFFF, rng.randrange(1 << 16))))
        attacks.append(bytes(body))
    many = raw_scu.associate_rq("CXRD", "FUZZER", [(f"1.2.3.{i}", ["1.2.840.10008.1.2"] * 20) for i in range(200)])
    attacks.append(many[:6] + many[6:60000])  # more contexts than IDs exist, cut to the PDU bound
    return attacks


def pdata_attacks(rng: random.Random, cx: int) -> list[bytes]:
    attacks = []
    for _ in range(40):
        value = rng.randbytes(rng.randrange(0, 256))
        claimed = rng.choice((0, 1, 2, len(value) + 2, len(value) + 1000, 0xFFFFFFFF))
        attacks.append(raw_scu.pdu(0x04, struct.pack(">LBB", claimed, rng.choice((cx, 0, 2, 255)),
                                                     rng.randrange(256)) + value))
    for _ in range(40):  # garbage command sets, marked last
        attacks.append(raw_scu.pdata(cx, 0x03, rng.randbytes(rng.randrange(1, 512))))
    return attacks


def nested_sequence(depth: int, undefined: bool) -> bytes:
    """(0040,0275) Request Attributes Sequence nested `depth` levels, explicit VR little endian."""
    inner = struct.pack("<HH", 0x0010, 0x0010) + b"PN" + struct.pack("<H", 8) + b"NESTED^X"  # a name at the bottom
    for _ in range(depth):
        if undefined:
            item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + inner + b"\xfe\xff\x0d\xe0\0\0\0\0"
            inner = struct.pack("<HH", 0x0040, 0x0275) + b"SQ\0\0" + b"\xff\xff\xff\xff" + item \
                + b"\xfe\xff\xdd\xe0\0\0\0\0"
        else:
            item = b"\xfe\xff\x00\xe0" + struct.pack("<L", len(inner)) + inner
            inner = struct.pack("<HH", 0x0040, 0x0275) + b"SQ\0\0" + struct.pack("<L", len(item)) + item
    return inner


def with_element(base: Base, index: int, element: bytes, tag: int) -> bytes:
    """The base data set with `element` (explicit VR bytes of `tag`) inserted in tag order."""
    body = bytearray(base.body)
    body[base.uid_at:base.uid_at + UID_LENGTH] = case_uid(index).encode()
    at = next((s for t, s, _ in base.elements if t > tag), len(body))
    return bytes(body[:at] + element + body[at:])


def with_values(base: Base, index: int, **values: int) -> bytes:
    """The base data set with US values (Rows, Columns) or an IS (NumberOfFrames) replaced."""
    ds = read_dataset(BytesIO(base.body), base.implicit, True)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = case_uid(index)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, base.implicit
    write_dataset(buf, ds)
    return buf.getvalue()


def deflated(raw: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(raw) + c.flush()


def deflate_bomb(base: Base, index: int, inflated_bytes: int) -> bytes:
    """The base header, then an OB element announcing `inflated_bytes` of zeros, streamed deflated."""
    header = base.body[:next(s for t, s, _ in base.elements if t == 0x7FE00010)]
    header = bytearray(header)
    header[base.uid_at:base.uid_at + UID_LENGTH] = case_uid(index).encode()
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [c.compress(bytes(header) + struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0"
                      + struct.pack("<L", inflated_bytes))]
    zeros = bytes(16 * 1024 * 1024)
    for _ in range(inflated_bytes // len(zeros)):
        out.append(c.compress(zeros))
    out.append(c.flush())
    return b"".join(out)


def stored_counts(state_dir: Path) -> tuple[int, int, int]:
    """(vault objects on disk, instance rows, instance.stored audit rows). Empty files are spare
    reservations the vault creates ahead of time, not objects; any other file counts."""
    objects = sum(1 for p in (state_dir / "vault").rglob("*") if p.is_file() and p.stat().st_size > 0)
    engine = create_engine(f"sqlite:///{state_dir / 'cxrd.db'}")
    with engine.connect() as c:
        rows = c.execute(text("SELECT count(*) FROM instances")).scalar()
        audited = c.execute(text("SELECT count(*) FROM audit_events WHERE event_type = 'instance.stored'")).scalar()
    engine.dispose()
    return objects, rows, audited


@pytest.mark.slow  # ~40 s on a loaded 2-core machine; part of the normal suite
def test_fuzz_campaign(daemon_factory, shared_data, tmp_path, capsys):  # noqa: ANN001
    d = daemon_factory({"CXRD_DICOM__PREASSOCIATION_TIMEOUT": "2", "CXRD_DICOM__NON_CHEST": "reject",
                        "CXRD_DICOM__MAX_DATASET_BYTES": str(MAX_DATASET_BYTES),
                        "CXRD_MODEL__WORKERS": "0"}).start()
    pid = d.proc.pid
    bases = corpus(shared_data)
    assert len(bases) >= 8
    pushes = copy_with_new_uids(shared_data / PUSH_IMAGE, tmp_path / "push", 6)
    assert storescu(d.dicom_port, pushes[0])[1] == ["Success"]  # warm: decoders and database ready
    baseline_hwm = vm_kib(pid, "VmHWM")
    rng = random.Random(SEED)
    outcomes: Counter = Counter()
    acknowledged: list[str] = []     # SOP Instance UIDs answered 0x0000
    wrong: list[str] = []            # findings, with the case to replay
    lock = threading.Lock()

    pushed: list[str] = []
    stop_pushing = threading.Event()

    def push_in_parallel() -> None:
        for p in pushes[1:]:
            if stop_pushing.wait(8.0):
                pass
            pushed.extend(storescu(d.dicom_port, p)[1] or ["no response"])
    pusher = threading.Thread(target=push_in_parallel, daemon=True)
    pusher.start()
    started = time.monotonic()

    # 1. PDUs before any association, one connection each, four at a time.
    def attack(data: bytes) -> bool:
        with socket.create_connection(("127.0.0.1", d.dicom_port), timeout=5) as s:
            try:
                s.sendall(data)
            except OSError:
                return True
            return answered(s, 6.0)
    raw_attacks = preassociation_attacks(rng)
    with ThreadPoolExecutor(4) as pool:
        stuck = [a[:12].hex() for a, ok in zip(raw_attacks, pool.map(attack, raw_attacks)) if not ok]
    assert stuck == [], stuck
    outcomes["preassociation PDUs"] = len(raw_attacks)
    phases = {"preassociation": time.monotonic() - started}

    contexts = sorted({(b.sop_class, b.syntax) for b in bases}
                      | {(b.sop_class, DeflatedExplicitVRLittleEndian) for b in bases if not b.implicit})
    proposals = [(sop, [ts]) for sop, ts in contexts]

    # 2. Malformed P-DATA-TFs on accepted associations.
    # Each is followed by an A-RELEASE-RQ, so that one waiting for more fragments is answered too;
    # the answer must come at once (a failure status, an A-ABORT, the release, or a closed socket).
    for data in pdata_attacks(rng, 1):
        assoc = raw_scu.associate(d.dicom_port, proposals[:4])
        assoc.sock.settimeout(10)
        try:
            assoc.sock.sendall(data + raw_scu.pdu(0x05, bytes(4)))
        except OSError:
            pass
        result = assoc.response()
        if result == 0:
            wrong.append(f"P-DATA attack answered 0x0000: {data[:24].hex()}")
        elif result == raw_scu.TIMED_OUT:
            wrong.append(f"P-DATA attack left hanging: {data[:24].hex()}")
        outcomes["P-DATA attacks"] += 1
        assoc.close()
    phases["P-DATA"] = time.monotonic() - started - sum(phases.values())
    mutation_started = time.monotonic()

    # 3. Mutated real data sets over reused associations, three at a time.
    def judge(index: int, base: Base, data: bytes, result: int | str, applied: list[str]) -> None:
        if result == 0xC211:  # "our own unexpected error": a path that crashed, not a refusal
            with lock:
                wrong.append(f"case {index} ({base.name}, {applied}) answered 0xC211")
        if result == 0:
            problem = valid_image(data, base, decode=False)
            with lock:
                acknowledged.append(case_uid(index))
                if problem is not None:
                    wrong.append(f"case {index} ({base.name}, {applied}) answered 0x0000 but {problem}")
        with lock:
            outcomes["0x0000" if result == 0 else (result if isinstance(result, str) else f"0x{result:04X}")] += 1

    def campaign(worker: int, indices: range) -> int:
        assoc, sent = None, 0
        for index in indices:
            if time.monotonic() - mutation_started > TIME_BUDGET_S:
                break
            base = bases[index % len(bases)]
            data, applied = mutate(base, index)
            if assoc is None or assoc.dead:
                assoc = raw_scu.associate(d.dicom_port, proposals)
            result = assoc.store(base.sop_class, base.syntax, case_uid(index), data)
            judge(index, base, data, result, applied)
            sent += 1
        if assoc is not None:
            assoc.release()
        return sent

    workers = 3
    per = MUTATED_CASES // workers
    with ThreadPoolExecutor(workers) as pool:
        sent = sum(pool.map(campaign, range(workers), [range(w * per, (w + 1) * per) for w in range(workers)]))
    outcomes["mutated data sets sent"] = sent
    phases["mutated"] = time.monotonic() - started - sum(phases.values())

    # 4. Bombs and deep nesting, each on its own case index past the mutated ones.
    special = MUTATED_CASES + 1
    by_name = {b.name: b for b in bases}
    explicit = next(b for b in bases if b.name == "nih_00000001_000_explicit-vr-le.dcm")
    j2k = by_name["nih_00000001_000_j2k-lossless.dcm"]
    jpeg = by_name["nih_00000001_000_jpeg-baseline-q95.dcm"]
    assoc = raw_scu.associate(d.dicom_port, proposals)
    bombs: list[tuple[str, Base, str, int, bytes]] = []
    for gib in (1, 3):
        bombs.append((f"deflate bomb {gib} GiB", explicit, DeflatedExplicitVRLittleEndian, special,
                      deflate_bomb(explicit, special, gib * 1024 ** 3)))
        special += 1
    for base in (j2k, jpeg):
        bombs.append((f"{base.name} declaring 65535 x 65535", base, base.syntax, special,
                      with_values(base, special, Rows=65535, Columns=65535)))
        special += 1
        bombs.append((f"{base.name} declaring 65535 frames", base, base.syntax, special,
                      with_values(base, special, NumberOfFrames=65535)))
        special += 1
    siz = j2k.body.find(b"\xff\x4f\xff\x51")  # the codestream's own header: 65535 x 65535 behind 1024 x 1024
    lying = bytearray(j2k.body)
    lying[j2k.uid_at:j2k.uid_at + UID_LENGTH] = case_uid(special).encode()
    lying[siz + 8:siz + 16] = (65535).to_bytes(4, "big") * 2
    bombs.append(("JPEG 2000 codestream declaring 65535 x 65535", j2k, j2k.syntax, special, bytes(lying)))
    special += 1
    for depth in (2000, 10000):
        for undefined in (True, False):
            bombs.append((f"sequence nested {depth} levels ({'undefined' if undefined else 'defined'} length)",
                          explicit, explicit.syntax, special,
                          with_element(explicit, special, nested_sequence(depth, undefined), 0x00400275)))
            special += 1
    for name, base, syntax, index, data in bombs:
        if assoc.dead:
            assoc = raw_scu.associate(d.dicom_port, proposals)
        result = assoc.store(base.sop_class, syntax, case_uid(index), data)
        outcomes[f"bomb: {name}"] = result if isinstance(result, str) else f"0x{result:04X}"
        if result == 0:
            wrong.append(f"{name} answered 0x0000")
    # A real image, deflated: the bounded inflate must still take it.
    good = bytearray(explicit.body)
    good[explicit.uid_at:explicit.uid_at + UID_LENGTH] = case_uid(special).encode()
    if assoc.dead:
        assoc = raw_scu.associate(d.dicom_port, proposals)
    deflated_result = assoc.store(explicit.sop_class, DeflatedExplicitVRLittleEndian, case_uid(special),
                                  deflated(bytes(good)))
    assoc.release()
    phases["bombs"] = time.monotonic() - started - sum(phases.values())

    stop_pushing.set()
    pusher.join(300)
    elapsed = time.monotonic() - started
    peak_growth = vm_kib(pid, "VmHWM") - baseline_hwm

    # Judge: a sample of what was acknowledged, decoded in full.
    by_uid = {case_uid(i): i for i in range(MUTATED_CASES)}
    sample = [by_uid[u] for u in acknowledged if u in by_uid][:: max(1, len(acknowledged) // 12)]
    corrupt_codestreams = 0
    for index in sample:
        base = bases[index % len(bases)]
        data = mutate(base, index)[0]
        problem = valid_image(data, base, decode=True)
        if problem is not None and fails_analysis_cleanly(data, base):
            corrupt_codestreams += 1  # the documented limit: see fails_analysis_cleanly
        elif problem is not None:
            wrong.append(f"case {index} ({base.name}) answered 0x0000 but does not decode: {problem}")

    with capsys.disabled():
        print(f"\nfuzz seed={SEED} mutated={sent} of {MUTATED_CASES} in {elapsed:.0f}s; "
              f"acknowledged={len(acknowledged)} (sampled and decoded: {len(sample)}, of which corrupt "
              f"coded data failed at analysis: {corrupt_codestreams}); "
              f"peak RSS growth={peak_growth} KiB; outcomes={dict(outcomes)}; "
              f"phases={ {k: round(v, 1) for k, v in phases.items()} }")

    crashes = [line[:400] for line in d.log_text().splitlines() if "crashed" in line or "Traceback" in line]
    assert wrong == [], (wrong[:20], crashes[:10])
    assert d.proc.poll() is None
    assert deflated_result == 0
    assert pushed == ["Success"] * (len(pushes) - 1), pushed
    assert peak_growth < RSS_GROWTH_BOUND_KIB, (peak_growth, baseline_hwm)
    assert sent >= min(MUTATED_CASES, 2000) or phases["mutated"] > TIME_BUDGET_S
    objects, rows, audited = stored_counts(d.state_dir)
    expected = len(set(acknowledged)) + len(pushes) + 1  # + the deflated real image
    assert objects == rows == audited == expected, (objects, rows, audited, expected)
    log = d.log_text()
    assert "Traceback" not in log and " trace=" not in log, log[-3000:]
    assert MARKER not in log and "NESTED^X" not in log
