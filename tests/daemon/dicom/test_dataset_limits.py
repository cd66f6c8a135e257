"""The data set of one C-STORE is bounded on every association our SCP accepts, with or without the
receive adjustments: fragments without end are cut off with an A-ABORT at the bound, and a deflated
data set is inflated within it (a deflate bomb is refused with 0xC210 after at most the bound)."""
from __future__ import annotations

import struct
import threading
import time
import tracemalloc
import zlib
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation as DX

import raw_scu
from config.schema import Dicom
from conftest import free_port
from daemon.dicom import dataset_limits, patches, scp, statuses

# sha256 of `inspect.getsource(...)` of the upstream functions `dataset_limits.receive_primitive`
# wraps and relies on. When an upgrade changes one, re-read it (where are fragments appended? what
# does Evt19 do there?), check the bound still holds, re-pin.
PINNED_UPSTREAM = {
    "pynetdicom.dimse.DIMSEServiceProvider.receive_primitive":
        "5f99c86b14a15cefa87d914cda3591ec4d636d4c53a982e945ec9c1828c6e43f",
    "pynetdicom.dimse_messages.DIMSEMessage.decode_msg":
        "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284",
}
LIMIT = 1024 * 1024


def test_the_wrapped_upstream_functions_are_the_pinned_ones():
    current = {name: patches.source_sha256(f) for name, f in dataset_limits.WRAPS.items()}
    assert current == PINNED_UPSTREAM


def _deflate(raw: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(raw) + c.flush()


def test_inflate_gives_back_what_was_deflated():
    raw = bytes(range(256)) * 3000
    assert dataset_limits.inflate(_deflate(raw), len(raw)) == raw


def test_a_deflate_bomb_is_refused_after_at_most_the_bound():
    bomb = _deflate(bytes(512 * 1024 * 1024))  # ~0.5 MB announcing 512 MiB
    assert len(bomb) < 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(dataset_limits.DatasetTooLarge):
            dataset_limits.inflate(bomb, LIMIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT, peak


@pytest.mark.parametrize("stream", [b"\xff" * 100, _deflate(b"x" * 100_000)[:-20], b""])
def test_a_broken_or_truncated_deflate_stream_is_a_value_error(stream):
    with pytest.raises(ValueError):
        dataset_limits.inflate(stream, LIMIT)


@pytest.fixture(params=["stock", "adjusted"])
def handle(request):  # noqa: ANN001, ANN201
    """Our SCP with a 1 MiB data set bound, recording what reached `on_store`."""
    patches.uninstall()
    if request.param == "adjusted":
        assert patches.install()
    stored: list[Dataset] = []

    def on_store(ds, meta, aet, host):  # noqa: ANN001, ANN202
        stored.append(ds)
        return statuses.SUCCESS
    h = scp.start(Dicom(bind="127.0.0.1", port=free_port(), max_dataset_bytes=LIMIT), on_store=on_store)
    h.stored = stored
    yield h
    h.stop(drain_s=1)
    patches.uninstall()


def _dataset_bytes(pixels: int, deflated: bool = False) -> tuple[str, bytes]:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = DX, generate_uid()
    ds.PatientID = "FUZZ"
    ds.add_new(0x7FE00010, "OB", bytes(pixels))
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    raw = buf.getvalue()
    return ds.SOPInstanceUID, _deflate(raw) if deflated else raw


def test_fragments_without_end_are_cut_off_at_the_bound(handle):  # noqa: ANN001
    """What the SCP holds is measured in the process (tracemalloc follows its threads): the bytes the
    client managed to send also fill the kernel's socket buffers, which autotune to tens of MiB on
    loopback and so say nothing about our bound."""
    assoc = raw_scu.associate(handle.port, [(DX, [ExplicitVRLittleEndian])])
    cx = assoc.accepted[(DX, ExplicitVRLittleEndian)]
    assoc.sock.sendall(raw_scu.pdata(cx, 0x03, raw_scu.c_store_command(DX, generate_uid(), 1)))
    sent, chunk, cut_off = 0, bytes(60_000), False
    tracemalloc.start()
    tracemalloc.reset_peak()  # were it already tracing, the peak would include what came before
    try:
        while sent < 256 * LIMIT:  # never marked last; far past any socket buffering
            assoc.sock.sendall(raw_scu.pdata(cx, 0x00, chunk))
            sent += len(chunk)
    except OSError:
        cut_off = True
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert cut_off, f"{sent} bytes accepted without an abort"
    assert peak < 4 * LIMIT, peak  # the bound plus one join, not what was sent
    assert assoc.response() in (raw_scu.ABORTED, raw_scu.CLOSED)
    assert handle.stored == []
    deadline = time.monotonic() + 5
    while handle.active_associations() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert handle.active_associations() == 0


def test_a_command_set_without_end_is_cut_off(handle):  # noqa: ANN001
    assoc = raw_scu.associate(handle.port, [(DX, [ExplicitVRLittleEndian])])
    cx = assoc.accepted[(DX, ExplicitVRLittleEndian)]
    sent, cut_off = 0, False
    tracemalloc.start()
    tracemalloc.reset_peak()  # were it already tracing, the peak would include what came before
    try:
        while sent < 256 * LIMIT:  # command, never last
            assoc.sock.sendall(raw_scu.pdata(cx, 0x01, bytes(16_000)))
            sent += 16_000
    except OSError:
        cut_off = True
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert cut_off, f"{sent} bytes accepted without an abort"
    assert peak < LIMIT, peak  # the command bound is far below the data set bound
    assert assoc.response() in (raw_scu.ABORTED, raw_scu.CLOSED)


def test_a_data_set_within_the_bound_is_stored(handle):  # noqa: ANN001
    assoc = raw_scu.associate(handle.port, [(DX, [ExplicitVRLittleEndian])])
    uid, data = _dataset_bytes(LIMIT - 4096)
    assert len(data) <= LIMIT
    assert assoc.store(DX, ExplicitVRLittleEndian, uid, data) == statuses.SUCCESS
    assoc.release()
    assert [str(ds.SOPInstanceUID) for ds in handle.stored] == [uid]


def test_a_deflated_data_set_is_inflated_and_a_deflate_bomb_refused(handle):  # noqa: ANN001
    assoc = raw_scu.associate(handle.port, [(DX, [DeflatedExplicitVRLittleEndian])])
    uid, data = _dataset_bytes(200_000, deflated=True)
    assert assoc.store(DX, DeflatedExplicitVRLittleEndian, uid, data) == statuses.SUCCESS
    assert len(handle.stored[0].PixelData) == 200_000
    bomb_uid, bomb = _dataset_bytes(256 * 1024 * 1024, deflated=True)  # 256 MiB in ~250 KB
    assert len(bomb) < LIMIT
    assert assoc.store(DX, DeflatedExplicitVRLittleEndian, bomb_uid, bomb) == statuses.CANNOT_UNDERSTAND
    uid2, data2 = _dataset_bytes(1000, deflated=True)  # the association goes on
    assert assoc.store(DX, DeflatedExplicitVRLittleEndian, uid2, data2) == statuses.SUCCESS
    assoc.release()
    assert [str(ds.SOPInstanceUID) for ds in handle.stored] == [uid, uid2]


def _explicit(elements: list[tuple[int, str, bytes]]) -> bytes:
    out = b""
    for tag, vr, value in elements:
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
        if vr in ("SQ", "OB"):
            out += head + b"\0\0" + struct.pack("<L", len(value)) + value
        else:
            out += head + struct.pack("<H", len(value)) + value
    return out


def _nested(depth: int) -> bytes:
    inner = _explicit([(0x00100010, "PN", b"DEEP^X")])
    for _ in range(depth):
        item = b"\xfe\xff\x00\xe0" + struct.pack("<L", len(inner)) + inner
        inner = _explicit([(0x00400275, "SQ", item)])
    return inner


@pytest.mark.parametrize("body, why", [
    (_explicit([(0x00280010, "US", b"\x00\x01\x02")]), "cannot be read"),         # 3 bytes of US
    (_explicit([(0x00280010, "US", b"\x00\x01\x00\x02")]), "more than one value"),  # Rows = [256, 512]
    (_nested(dataset_limits.MAX_SEQUENCE_DEPTH + 1), "nested deeper"),
])
def test_a_data_set_with_an_unreadable_element_is_refused_before_any_stage(body, why):
    ds = read_dataset(BytesIO(body), is_implicit_VR=False, is_little_endian=True)
    with pytest.raises(ValueError, match=why):
        dataset_limits.check_readable(ds)


def test_a_readable_data_set_keeps_its_raw_elements():
    ds = read_dataset(BytesIO(_nested(5) + _explicit([(0x00280010, "US", b"\x00\x01")])), False, True)
    dataset_limits.check_readable(ds)
    assert all(ds.get_item(tag).is_raw for tag in ds.keys())


def test_a_garbage_command_set_is_aborted_without_killing_a_thread(handle):  # noqa: ANN001
    died: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: died.append(args.exc_value)
    try:
        assoc = raw_scu.associate(handle.port, [(DX, [ExplicitVRLittleEndian])])
        cx = assoc.accepted[(DX, ExplicitVRLittleEndian)]
        assoc.sock.sendall(raw_scu.pdata(cx, 0x03, _explicit([(0x00100010, "PN", b"NOT^A^COMMAND")])))
        assert assoc.response() in (raw_scu.ABORTED, raw_scu.CLOSED)
        time.sleep(0.3)
    finally:
        threading.excepthook = previous
    assert died == []
