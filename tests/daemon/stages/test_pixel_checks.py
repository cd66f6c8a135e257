"""Pixel data is refused at ingest when it declares too much or is not what its header says."""
from __future__ import annotations

import pydicom
import pytest

from conftest import SHARED_DATA
from daemon.stages.pixel_checks import pixel_problem

BUDGET = 64 * 1024 * 1024
NATIVE = SHARED_DATA / "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"


def test_every_shared_image_passes():
    for path in sorted((SHARED_DATA / "dicom").rglob("*.dcm")):
        assert pixel_problem(pydicom.dcmread(path, force=True), BUDGET) is None, path.name


@pytest.mark.parametrize("fraction", [0.6, 0.999])
def test_truncated_native_pixel_data_is_refused(fraction):
    ds = pydicom.dcmread(NATIVE)
    ds.PixelData = ds.PixelData[: int(len(ds.PixelData) * fraction) // 2 * 2]
    assert "pixel data is" in pixel_problem(ds, BUDGET)


def test_a_data_set_cut_off_inside_its_pixel_data_is_refused():
    """The element's length field still declares the full length; what arrived is shorter."""
    from io import BytesIO
    from pydicom.filereader import read_dataset
    raw = NATIVE.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    cut = raw[meta_end:len(raw) - 300_000]
    ds = read_dataset(BytesIO(cut), is_implicit_VR=False, is_little_endian=True)
    assert "pixel data is" in pixel_problem(ds, BUDGET)


def test_a_header_that_declares_more_than_the_budget_is_refused_before_any_decoding():
    ds = pydicom.dcmread(SHARED_DATA / "dicom/derived/nih_00000001_000_j2k-lossless.dcm")
    ds.Rows = ds.Columns = 65535
    assert "more than dicom.max_pixels" in pixel_problem(ds, BUDGET)


def test_missing_or_nonsense_dimensions_are_refused():
    ds = pydicom.dcmread(NATIVE)
    del ds.Rows
    assert "missing or not a positive number" in pixel_problem(ds, BUDGET)
    ds = pydicom.dcmread(NATIVE)
    ds.BitsAllocated = 0
    assert "missing or not a positive number" in pixel_problem(ds, BUDGET)


@pytest.mark.parametrize("keyword, value", [("SamplesPerPixel", None), ("PhotometricInterpretation", None),
                                            ("PhotometricInterpretation", "MONOCHROME9"), ("BitsStored", None),
                                            ("BitsStored", 17), ("HighBit", 12), ("PixelRepresentation", 2),
                                            ("BitsAllocated", 12), ("SamplesPerPixel", 2)])
def test_a_pixel_description_no_decoder_could_read_is_refused(keyword, value):
    ds = pydicom.dcmread(NATIVE)
    if value is None:
        delattr(ds, keyword)
    else:
        setattr(ds, keyword, value)
    assert pixel_problem(ds, BUDGET) is not None


def _with_first_fragment(ds, edit):  # noqa: ANN001, ANN202 - edit(bytearray) changes the codestream
    import struct
    value = bytearray(ds.PixelData)
    bot = 8 + struct.unpack_from("<L", value, 4)[0]
    fragment = bytearray(value[bot + 8:bot + 8 + struct.unpack_from("<L", value, bot + 4)[0]])
    edit(fragment)
    ds.PixelData = bytes(value[:bot + 8]) + bytes(fragment) + bytes(value[bot + 8 + len(fragment):])
    return ds


@pytest.mark.parametrize("name", ["nih_00000001_000_j2k-lossless.dcm", "nih_00000001_000_jpeg-baseline-q95.dcm"])
def test_a_codestream_declaring_more_than_its_header_is_refused(name):
    """65535 x 65535 in the codestream's own header (SIZ or SOF) behind Rows = Columns = 1024: the
    decoder would size its output from the codestream."""
    def huge(fragment: bytearray) -> None:
        at = fragment.find(b"\xff\x51") if "j2k" in name else fragment.find(b"\xff\xc0")
        if "j2k" in name:
            fragment[at + 6:at + 14] = (65535).to_bytes(4, "big") * 2  # Xsiz, Ysiz
        else:
            fragment[at + 5:at + 9] = (65535).to_bytes(2, "big") * 2  # Y, X
    ds = _with_first_fragment(pydicom.dcmread(SHARED_DATA / "dicom/derived" / name), huge)
    assert "codestream declares other dimensions" in pixel_problem(ds, BUDGET)


def test_compressed_pixel_data_that_is_no_codestream_is_refused():
    ds = _with_first_fragment(pydicom.dcmread(SHARED_DATA / "dicom/derived/nih_00000001_000_j2k-lossless.dcm"),
                              lambda f: f.__setitem__(slice(0, 4), b"\0\0\0\0"))
    assert "does not start with a codestream header" in pixel_problem(ds, BUDGET)
