"""Is the pixel data what the header says it is? Checked at ingest, before anything decodes it.

Two ways a data set can be acknowledged, stored and then fail in the worker, out of the sender's
sight, or worse, make the worker allocate what the peer declared:
- Rows x Columns x frames over `max_pixels` (a few kilobytes of JPEG 2000 can declare 65535 x 65535):
  refused before any decoder sees it.
- Native (uncompressed) pixel data shorter or longer than Rows x Columns x frames x samples x
  bytes per sample (a file cut off in transfer, a header that lies): refused. Encapsulated
  (compressed) pixel data cannot be measured without decoding it and is left to the decoder, under
  the pixel budget.
Both are answered with a failure status and audited; nothing is stored or queued.
"""
from __future__ import annotations

from pydicom.dataset import Dataset

PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF


def _int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return -1


def pixel_problem(ds: Dataset, max_pixels: int) -> str | None:
    """Why the pixel data must be refused (one line, no values from the data set), or None."""
    if PIXEL_DATA not in ds:
        return None  # the chest rule refuses images without pixels
    rows, cols = _int(ds, "Rows", -1), _int(ds, "Columns", -1)
    frames, samples = _int(ds, "NumberOfFrames", 1), _int(ds, "SamplesPerPixel", 1)
    bits = _int(ds, "BitsAllocated", -1)
    if min(rows, cols, frames, samples, bits) < 1:
        return "Rows, Columns, NumberOfFrames, SamplesPerPixel or BitsAllocated missing or not a positive number"
    pixels = rows * cols * frames
    if pixels > max_pixels:
        return f"image declares {pixels} pixels, more than dicom.max_pixels ({max_pixels})"
    raw = ds.get_item(PIXEL_DATA)
    if getattr(raw, "length", None) == _UNDEFINED or getattr(raw, "is_undefined_length", False):
        return None  # encapsulated: the decoder measures it, under the pixel budget
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
