"""Input characteristics measured on real radiographs while preprocessing them, without changing the
model's input and without reading identifying attributes."""
from __future__ import annotations

import io

import pydicom
import torch

from cxrmodel.input_profile import preprocess_profiled, profile_file
from cxrmodel.preprocess import TORCHVISION_SPEC, XRV_SPEC, preprocess


def test_same_tensor_as_preprocess_and_a_profile_of_a_monochrome1_cr(shared_data):
    data = (shared_data / "dicom/chest/wg04_RG1_J2KI.dcm").read_bytes()
    for spec in (TORCHVISION_SPEC, XRV_SPEC):
        tensor, profile = preprocess_profiled(data, spec)
        assert torch.equal(tensor, preprocess(data, spec))
    ds = pydicom.dcmread(io.BytesIO(data))
    assert profile["photometric"] == "MONOCHROME1" and profile["bits_stored"] == ds.BitsStored
    assert (profile["rows"], profile["columns"]) == (ds.Rows, ds.Columns)
    assert 0.0 <= profile["unit_p05"] <= profile["unit_p50"] <= profile["unit_p95"] <= 1.0
    assert profile["intensity_p05"] <= profile["intensity_mean"] <= profile["intensity_p95"]


def test_equipment_attributes_only(shared_data, tmp_path):
    ds = pydicom.dcmread(shared_data / "dicom/derived/nih_00000001_000_explicit-vr-le.dcm")
    ds.Manufacturer, ds.ManufacturerModelName = "  ACME   Imaging ", "DR-1"
    ds.StationName, ds.InstitutionName, ds.DeviceSerialNumber = "ZZSTATION", "ZZINSTITUTE", "ZZSERIAL"
    ds.ImagerPixelSpacing = [0.139, 0.141]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    _, profile = preprocess_profiled(buf.getvalue(), TORCHVISION_SPEC)
    assert profile["manufacturer"] == "ACME Imaging" and profile["model_name"] == "DR-1"
    assert abs(profile["pixel_spacing_mm"] - 0.140) < 1e-9
    assert not any(m in repr(profile) for m in ("ZZSTATION", "ZZINSTITUTE", "ZZSERIAL"))
    # 8-bit, no window: the modality values are the stored ones, the unit image their /255
    assert abs(profile["intensity_mean"] / 255 - profile["unit_mean"]) < 1e-3


def test_png_validation_image_states_no_equipment(shared_data):
    png = sorted((shared_data / "nih/images").glob("*.png"))[0]
    profile = profile_file(png)
    assert profile["manufacturer"] is None and profile["photometric"] is None
    assert profile["bits_stored"] == 8 and profile["rows"] == 256 and 0 < profile["unit_mean"] < 1
