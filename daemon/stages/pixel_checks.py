"""Is the pixel data what the header says it is? Checked at ingest, before anything decodes it.

Two ways a data set can be acknowledged, stored and then fail in the worker, out of the sender's
sight, or worse, make the worker allocate what the peer declared:
- Rows x Columns x frames over `max_pixels` (a few kilobytes of JPEG 2000 can declare 65535 x 65535):
  refused before any decoder sees it.
- Native (uncompressed) pixel data shorter or longer than Rows x Columns x frames x samples x
  bytes per sample (a file cut off in transfer, a header that lies): refused.
- Encapsulated (compressed) pixel data whose codestream is not what the header declares: a decoder
  sizes its output from the codestream's own header (JPEG 2000 SIZ, JPEG/JPEG-LS SOF, the RLE
  header), not from Rows and Columns, so a codestream declaring 65535 x 65535 behind a header
  declaring 1024 x 1024 would pass the budget and then allocate gigabytes. Its main header is read
  (no decoding) and must match Rows, Columns and Samples per Pixel; what follows it, the compressed
  data, is the decoder's to judge: an image that then fails to decode is marked failed by the
  worker, never lost.
- The other attributes that describe the pixels (Samples per Pixel, Photometric Interpretation,
  Bits Stored, High Bit, Pixel Representation...) missing or inconsistent: no decoder could read them.
All are answered with a failure status and audited; nothing is stored or queued.
"""
from __future__ import annotations

import struct

from pydicom.dataset import Dataset
from pydicom.uid import UID

PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF


def _int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return -1


_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422",
                          "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "XYB"})


def pixel_problem(ds: Dataset, max_pixels: int) -> str | None:
    """Why the pixel data must be refused (one line, no values from the data set), or None."""
    if PIXEL_DATA not in ds:
        return None  # the chest rule refuses images without pixels
    rows, cols = _int(ds, "Rows", -1), _int(ds, "Columns", -1)
    frames, samples = _int(ds, "NumberOfFrames", 1), _int(ds, "SamplesPerPixel", -1)
    bits = _int(ds, "BitsAllocated", -1)
    if min(rows, cols, frames, samples, bits) < 1:
        return "Rows, Columns, NumberOfFrames, SamplesPerPixel or BitsAllocated missing or not a positive number"
    pixels = rows * cols * frames
    if pixels > max_pixels:
        return f"image declares {pixels} pixels, more than dicom.max_pixels ({max_pixels})"
    problem = _pixel_description_problem(ds, samples, bits)
    if problem is not None:
        return problem
    raw = ds.get_item(PIXEL_DATA)
    if getattr(raw, "length", None) == _UNDEFINED or getattr(raw, "is_undefined_length", False):
        return _codestream_problem(ds, raw.value, rows, cols, samples)
    # The bytes that arrived, not the element's length field: a data set cut off inside its pixel
    # data still declares the full length, and pydicom's reader returns what the stream held.
    value = raw.value
    if isinstance(value, list):
        return None
    length = len(value or b"")
    expected = (pixels * samples + 7) // 8 if bits == 1 else pixels * samples * ((bits + 7) // 8)
    if length not in (expected, expected + expected % 2):  # one byte of padding to an even length
        return f"pixel data is {length} bytes where Rows x Columns x frames x samples x bits declare {expected}"
    return None


def _pixel_description_problem(ds: Dataset, samples: int, bits: int) -> str | None:
    """The Image Pixel module's other Type 1 attributes (PS3.3 C.7.6.3), without which no decoder
    can read the pixels: an image lacking them would be acknowledged and then fail in the worker."""
    stored, high = _int(ds, "BitsStored", -1), _int(ds, "HighBit", -1)
    representation = _int(ds, "PixelRepresentation", -1)
    if bits != 1 and (bits % 8 or bits > 64):
        return "BitsAllocated is not 1 or a multiple of 8 up to 64"
    if not 1 <= stored <= bits or not stored - 1 <= high < bits:
        return "BitsStored or HighBit missing or inconsistent with BitsAllocated"
    if representation not in (0, 1):
        return "PixelRepresentation missing or not 0 or 1"
    if samples not in (1, 3, 4):
        return "SamplesPerPixel is not 1, 3 or 4"
    if samples > 1 and _int(ds, "PlanarConfiguration", -1) not in (0, 1):
        return "PlanarConfiguration missing or not 0 or 1 for a colour image"
    photometric = ds.get("PhotometricInterpretation")
    if not isinstance(photometric, str) or photometric.strip() not in _PHOTOMETRIC:
        return "PhotometricInterpretation missing or not a defined term"
    return None


_J2K = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                  "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})
_JPEG = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                   "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
_RLE = "1.2.840.10008.1.2.5"
# Start-of-frame markers: JPEG SOF0-3, 5-7, 9-11, 13-15 (not DHT C4, JPG C8, DAC CC); JPEG-LS SOF55.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_HEADER_BYTES = 64 * 1024  # the main header of a codestream is a few hundred bytes


def _first_fragment(value: object) -> bytes | None:
    """The first bytes of the first fragment after the Basic Offset Table (PS3.5 A.4), or None."""
    if not isinstance(value, bytes):
        return None
    at, index = 0, 0
    while at + 8 <= len(value):
        tag, length = struct.unpack_from("<LL", value, at)
        if tag != 0xE000FFFE or length == _UNDEFINED:
            return None
        at += 8
        if index == 1:
            return value[at:at + min(length, _HEADER_BYTES)]
        at += length
        index += 1
    return None


def _codestream_problem(ds: Dataset, value: object, rows: int, cols: int, samples: int) -> str | None:
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if not UID(syntax).is_compressed:
        return None
    head = _first_fragment(value)
    if head is None:
        return "encapsulated pixel data without a Basic Offset Table item and a fragment"
    try:
        if syntax in _J2K:
            found = _j2k_size(head)
        elif syntax in _JPEG:
            found = _jpeg_size(head)
        elif syntax == _RLE:
            return _rle_problem(head, samples, _int(ds, "BitsAllocated", -1))
        else:
            return None
    except struct.error:
        found = None
    if found is None:
        return "the compressed pixel data does not start with a codestream header of its transfer syntax"
    if found != (rows, cols, samples):
        return "the codestream declares other dimensions or samples than Rows, Columns and SamplesPerPixel"
    return None


def _j2k_size(head: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG 2000 codestream's SIZ segment (T.800 A.5.1)."""
    at = head.find(b"\xff\x4f\xff\x51", 0, 256)  # SOC then SIZ; a JP2 wrapper's boxes come first
    if at < 0:
        return None
    length, _, xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">HHLLLL", head, at + 4)
    components = struct.unpack_from(">H", head, at + 4 + 36)[0]
    if length != 38 + 3 * components or xsiz <= xosiz or ysiz <= yosiz:
        return None
    return ysiz - yosiz, xsiz - xosiz, components


def _jpeg_size(head: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from the first SOF segment of a JPEG or JPEG-LS stream."""
    if head[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = struct.unpack_from(">H", head, at + 2)[0]
        if marker in _SOF:
            _, lines, columns, components = struct.unpack_from(">BHHB", head, at + 4)
            return lines, columns, components
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        at += 2 + length
    return None


def _rle_problem(head: bytes, samples: int, bits: int) -> str | None:
    """The RLE header (PS3.5 G.3.1): one segment per sample and byte of a sample, the first at 64."""
    if len(head) < 64:
        return "the RLE pixel data is shorter than its header"
    segments, first = struct.unpack_from("<LL", head, 0)
    if segments != samples * ((bits + 7) // 8) or first != 64:
        return "the RLE header's segments do not match SamplesPerPixel and BitsAllocated"
    return None
