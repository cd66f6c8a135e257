"""A dataset as DICOM Part 10 file bytes, in parts, without copying its pixel data.

pydicom's writer copies a Pixel Data value three times through fresh buffers (element buffer,
its `getvalue()`, the output stream), and the page faults of fresh megabytes cost more than the
copying; this runs for every received image before it is acknowledged. Here everything
but Pixel Data goes through `dcmwrite` (a few kB), and the Pixel Data element is appended as its
8/12-byte header plus a view of the value the dataset already holds. The vault encrypts the parts
as one plaintext, so the stored file is byte-for-byte what `dcmwrite` alone would produce (a test
checks this on every shared file). Anything unusual (big endian, deflate, an element after Pixel
Data, an odd length pydicom would pad, an ambiguous VR) simply takes the plain `dcmwrite` path.

The rest (`_header`) skips `dcmwrite`'s generic machinery too, because for the ~25 elements of a
de-identified radiograph that machinery is mostly per-element overhead and a deep copy of the file
meta, paid on the C-STORE path. The meta group that de-identification writes (five UIDs and a name) is encoded here;
elements still as received (raw) are copied with their header; plain ASCII text, UIDs and binary
numbers that pydicom decoded or de-identification set are packed here the way pydicom's writers
pack them; everything else (person names, sequences, other character sets, IS/DS, dates as
objects...) goes through pydicom's own `write_data_element`. A dataset whose encoding or character
set differs from how it was received, or any other meta group, takes `dcmwrite`.
"""
from __future__ import annotations

import io
import struct

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from storage.errors import TamperError

PIXEL_DATA = 0x7FE00010
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"

Buffer = bytes | memoryview


class UnwritableDataset(ValueError):
    """A received data set that pydicom reads but cannot encode (a value its VR cannot hold)."""


def file_parts(ds: Dataset) -> list[Buffer]:
    """The Part 10 file (preamble, meta group, dataset) as buffers to be written in order.

    Needs `ds.file_meta.TransferSyntaxUID`. The dataset is left as it was. UnwritableDataset for a
    data set that cannot be encoded: that is the sender's data, not an error of ours.
    """
    try:
        return _file_parts(ds)
    except (ValueError, TypeError, OverflowError, struct.error, OSError) as exc:  # OSError: pydicom's
        # writers wrap encoding failures in it; nothing here touches a file (the parts are in memory)
        raise UnwritableDataset(f"the data set cannot be encoded ({type(exc).__name__})") from None


def _file_parts(ds: Dataset) -> list[Buffer]:
    fast = _pixel_data_passthrough(ds)
    if fast is None:
        return [_dcmwrite(ds)]
    elem, head, undefined = fast
    rest = _header(ds)
    if rest is None:
        del ds[PIXEL_DATA]
        try:
            rest = _dcmwrite(ds)
        finally:
            ds[PIXEL_DATA] = elem
    parts: list[Buffer] = [rest, head, memoryview(elem.value)]
    if undefined:
        parts.append(_SEQUENCE_DELIMITER)
    return parts


def _dcmwrite(ds: Dataset) -> memoryview:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getbuffer()


def _pixel_data_passthrough(ds: Dataset) -> tuple[object, bytes, bool] | None:
    """(element, encoded element header, undefined length) when Pixel Data can be appended as is."""
    if PIXEL_DATA not in ds or max(ds.keys()) != PIXEL_DATA:
        return None
    ts = UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""))
    if not ts or not ts.is_little_endian or ts.is_deflated:
        return None
    elem = ds[PIXEL_DATA]
    value, vr, undefined = elem.value, elem.VR, elem.is_undefined_length
    if not isinstance(value, bytes) or (not undefined and len(value) % 2):
        return None
    if undefined != ts.is_compressed:  # dcmwrite decides encapsulation by the syntax, not the flag
        return None
    if undefined and not value.startswith(b"\xfe\xff\x00\xe0"):  # not encapsulated: let pydicom complain
        return None
    length = 0xFFFFFFFF if undefined else len(value)
    tag = struct.pack("<HH", 0x7FE0, 0x0010)
    if ts.is_implicit_VR:
        return elem, tag + struct.pack("<L", length), undefined
    if vr not in ("OB", "OW"):
        return None
    return elem, tag + vr.encode() + b"\0\0" + struct.pack("<L", length), undefined


_META_VERSION = 0x00020001
_META_KEYS = {0x00020002: b"UI", 0x00020003: b"UI", 0x00020010: b"UI", 0x00020012: b"UI", 0x00020013: b"SH"}


def _header(ds: Dataset) -> bytes | None:
    """Preamble, meta group and every element before Pixel Data, as `dcmwrite` writes them, or None
    where this fast path does not apply (the caller then uses `dcmwrite`)."""
    meta = _meta_group(ds.file_meta)
    if meta is None:
        return None
    implicit = UID(ds.file_meta.TransferSyntaxUID).is_implicit_VR
    # Raw elements are copied only if they are being written as they were read (dcmwrite's rule).
    if ds.original_encoding != (implicit, True) or ds.original_character_set != ds._character_set:
        return None
    preamble = ds.preamble if ds.preamble is not None else bytes(128)
    if len(preamble) != 128:
        return None
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    fp.write(preamble + b"DICM" + meta)
    encodings = ds.get("SpecificCharacterSet", "iso8859")
    for tag in sorted(ds.keys()):
        if tag == PIXEL_DATA:
            break
        if tag.element == 0 and tag.group > 6:  # retired group lengths are not written (PS3.5 7.2)
            continue
        elem = ds.get_item(tag)
        if elem.is_raw:
            if not _write_raw(fp, elem, implicit):
                return None
            continue
        if tag == _DEID_METHOD_CODES:
            _write_memoised_sequence(fp, elem, encodings)
            continue
        value = _simple_value(elem) if encodings in _DEFAULT_CHARSETS else None
        if value is None:
            write_data_element(fp, elem, encodings)
        elif not _write_element(fp, elem.tag, elem.VR, value, implicit):
            return None
    return fp.getvalue()


_DEFAULT_CHARSETS = ("iso8859", "ISO_IR 6", "", None)
_DEID_METHOD_CODES = 0x00120064  # De-identification Method Code Sequence: the same few items on every image
_SEQUENCES: dict[tuple, bytes] = {}


def _write_memoised_sequence(fp: DicomBytesIO, elem, encodings) -> None:  # noqa: ANN001
    """The sequence ingest adds to every image (codes naming the de-identification profile and
    options: no patient data) is encoded by pydicom once per distinct content and encoding, not
    per image; that was a third of the header's cost. Anything unusual is simply written."""
    try:
        key = (elem.VR, fp.is_implicit_VR, str(encodings),
               tuple(tuple((e.tag, e.VR, e.value) for e in item) for item in elem.value))
        encoded = _SEQUENCES.get(key)
    except TypeError:  # a value that cannot be a key (a list, say): no memo
        key, encoded = None, None
    if encoded is None:
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, fp.is_implicit_VR
        write_data_element(buf, elem, encodings)
        encoded = buf.getvalue()
        if key is not None and len(_SEQUENCES) < 32:
            _SEQUENCES[key] = encoded
    fp.write(encoded)
_PADDED_TEXT = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "SH", "LO", "UR", "LT", "ST", "UC", "UT"})
_NUMBERS = {"US": "H", "UL": "L", "SS": "h", "SL": "l", "FL": "f", "FD": "d"}


def _simple_value(elem) -> bytes | None:  # noqa: ANN001 - DataElement
    """The encoded value of an element pydicom would write with `write_string`/`write_text`/
    `write_numbers` (ASCII str or list of str, ints and floats), or None to let pydicom write it."""
    vr, value = elem.VR, elem.value
    if value is None or value == "" or (type(value) in (list, MultiValue) and not value):
        return b"" if vr in _PADDED_TEXT or vr == "UI" or vr in _NUMBERS else None
    if vr == "UI" or vr in _PADDED_TEXT:
        values = [value] if isinstance(value, str) else value  # str or UID (a str subclass)
        if type(values) not in (list, MultiValue) or any(not isinstance(v, str) or not v.isascii() for v in values):
            return None
        text = "\\".join(values).encode("ascii")
        return text + (b"\0" if vr == "UI" else b" ") if len(text) % 2 else text
    code = _NUMBERS.get(vr)
    if code is not None:
        values = [value] if type(value) in (int, float) else value
        if type(values) not in (list, MultiValue) or any(type(v) not in (int, float) for v in values):
            return None
        if code not in "fd" and any(type(v) is not int for v in values):
            return None
        try:
            return struct.pack(f"<{len(values)}{code}", *values)
        except struct.error:  # out of range: pydicom raises its own error for it
            return None
    return None


def _write_element(fp: DicomBytesIO, tag: int, vr: str, value: bytes, implicit: bool) -> bool:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        fp.write(head + struct.pack("<L", len(value)) + value)
    elif vr in EXPLICIT_VR_LENGTH_32:
        fp.write(head + vr.encode() + b"\0\0" + struct.pack("<L", len(value)) + value)
    elif len(value) <= 0xFFFF:
        fp.write(head + vr.encode() + struct.pack("<H", len(value)) + value)
    else:
        return False  # pydicom would rewrite it as UN, with a warning
    return True


def _write_raw(fp: DicomBytesIO, elem, implicit: bool) -> bool:  # noqa: ANN001 - RawDataElement
    """Copy an element as received; False for what `write_data_element` would change (an undefined
    length, a VR it rewrites)."""
    value, vr = elem.value, elem.VR
    if elem.length == 0xFFFFFFFF or not isinstance(value, bytes):
        return False
    if not implicit and (not vr or len(vr) != 2):
        return False
    return _write_element(fp, elem.tag, vr, value, implicit)


def _meta_group(meta: Dataset) -> bytes | None:
    """The File Meta Information group as `dcmwrite(enforce_file_format=True)` writes it, for the
    elements de-identification sets; None for any other meta."""
    keys = set(meta.keys())
    version = meta.get_item(_META_VERSION) if _META_VERSION in keys else None
    if keys - {_META_VERSION} != set(_META_KEYS) or (version is not None and version.value != b"\0\1"):
        return None
    body = b"\2\0\1\0OB\0\0\2\0\0\0\0\1"
    for tag, vr in _META_KEYS.items():
        elem = meta.get_item(tag)
        if elem.is_raw or not isinstance(elem.value, str) or not elem.value:
            return None
        try:
            value = elem.value.encode("ascii")
        except UnicodeEncodeError:
            return None
        if len(value) % 2:
            value += b"\0" if vr == b"UI" else b" "
        body += struct.pack("<HH", 2, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value
    return b"\2\0\0\0UL\4\0" + struct.pack("<L", len(body)) + body


def checked_instance(data: bytes, sop_instance_uid: str, object_id: str) -> bytes:
    """`data` (a decrypted vault object) if it is the instance `sop_instance_uid` names; TamperError if not.

    The vault authenticates an object under its own id, so an object is never altered unseen; but the
    database row that points at it could be changed to point at another patient's object, whose pixels
    would then be classified, and drawn into a report, as this instance's. Every object is written with
    the instance's pseudonymous SOP Instance UID, so reading it back before use tells the two apart."""
    try:
        found = str(dcmread(io.BytesIO(data), stop_before_pixels=True,
                           specific_tags=["SOPInstanceUID"]).get("SOPInstanceUID", ""))
    except Exception:
        found = ""
    if found != sop_instance_uid:
        raise TamperError(object_id, "the object holds another instance than the row points from")
    return data
