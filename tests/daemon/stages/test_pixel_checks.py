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
