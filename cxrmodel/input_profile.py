"""Input characteristics of one image: what drift is measured on besides the model's scores.

Measured on the pixels a caller has already decoded (never decoded again) and on a strided
subsample of at most about `SAMPLE_PIXELS` pixels, so a profile costs a small fraction of the
image's preprocessing. Only equipment and image-geometry attributes are read: Manufacturer and
Manufacturer's Model Name (kept by de-identification; they name a product, not a person, site or
device), spacing, bit depth, photometric interpretation, size. Station name, institution, serial
numbers and dates are never read.

Two intensity scales are kept:
- `intensity_*`: the stored values after the Modality LUT (rescale slope/intercept or LUT), before
  any window: a new detector, a new processing curve or an inverted photometric interpretation
  moves these. For a PNG they are its 8/16-bit pixel values.
- `unit_*`: the [0, 1] image the model's normalisation starts from (after VOI and MONOCHROME1
  inversion), comparable across PNG validation images and live DICOM.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

SAMPLE_PIXELS = 16384  # a 128 x 128 grid: summary statistics of a radiograph to well under 1%
TEXT_MAX = 64


def _stride(shape: tuple[int, ...]) -> int:
    return max(1, int(math.ceil(math.sqrt(shape[0] * shape[1] / SAMPLE_PIXELS))))


def _stats(values: np.ndarray, prefix: str) -> dict[str, float]:
    v = np.array(values, dtype=np.float32).ravel()  # a copy: partitioned in place below
    if v.size == 0:
        return {}
    mean, std = float(v.mean()), float(v.std())
    # three order statistics by one partition (linear time), not a sort as np.percentile would do
    k = [int(round(f * (v.size - 1))) for f in (0.05, 0.5, 0.95)]
    v.partition(k)
    p05, p50, p95 = v[k[0]], v[k[1]], v[k[2]]
    return {f"{prefix}_mean": mean, f"{prefix}_std": std, f"{prefix}_p05": float(p05),
            f"{prefix}_p50": float(p50), f"{prefix}_p95": float(p95)}


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else ""
    return " ".join(str(value or "").split())[:TEXT_MAX]


def _spacing(ds: Any) -> float | None:
    """Mean of the row and column spacing in mm: Pixel Spacing, else Imager Pixel Spacing."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            values = [float(v) for v in (value if isinstance(value, (list, tuple)) or
                                          type(value).__name__ == "MultiValue" else [value])]
        except (TypeError, ValueError):
            continue
        values = [v for v in values if math.isfinite(v) and v > 0]
        if values:
            return float(np.mean(values[:2]))
    return None


def _int(ds: Any, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _modality_sample(ds: Any, stored: np.ndarray) -> np.ndarray:
    """The Modality LUT, as the preprocessing applies it, on a subsample of the stored values."""
    from cxrmodel.preprocess import _modality
    step = _stride(stored.shape)
    return _modality(ds, stored[::step, ::step])


def dicom_profile(ds: Any, unit: np.ndarray) -> dict[str, Any]:
    """A DICOM image's characteristics; `ds.pixel_array` must already be decoded (pydicom keeps it),
    `unit` is the [0, 1] image made from it."""
    stored = ds.pixel_array  # decoded once by the preprocessing, kept by pydicom: not decoded again
    rows, columns = (int(unit.shape[0]), int(unit.shape[1]))
    step = _stride(unit.shape)
    return {"manufacturer": _text(ds, "Manufacturer"), "model_name": _text(ds, "ManufacturerModelName"),
            "pixel_spacing_mm": _spacing(ds), "bits_stored": _int(ds, "BitsStored"),
            "photometric": _text(ds, "PhotometricInterpretation").upper(), "rows": rows, "columns": columns,
            **_stats(_modality_sample(ds, stored), "intensity"), **_stats(unit[::step, ::step], "unit")}


def png_profile(raw: np.ndarray, unit: np.ndarray, bits: int) -> dict[str, Any]:
    """A PNG's characteristics (ChestX-ray14 validation images): no equipment attributes."""
    step = _stride(unit.shape)
    return {"manufacturer": None, "model_name": None, "pixel_spacing_mm": None, "bits_stored": bits,
            "photometric": None, "rows": int(unit.shape[0]), "columns": int(unit.shape[1]),
            **_stats(raw[::step, ::step], "intensity"), **_stats(unit[::step, ::step], "unit")}


def profile_file(path: Any) -> dict[str, Any]:
    """Characteristics of one validation image file (PNG or DICOM); reads it once."""
    from .preprocess import PNG_MAGIC, _read_bytes, load_image, png_to_unit
    data = _read_bytes(path)
    if data.startswith(PNG_MAGIC):
        unit = png_to_unit(data)
        bits = 16 if _png_bits(data) == 16 else 8
        return png_profile(unit * (2 ** bits - 1), unit, bits)
    import io

    import pydicom
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    return dicom_profile(ds, load_image(ds))


def _png_bits(data: bytes) -> int:
    """Bit depth from the IHDR chunk (byte 24 of a PNG)."""
    return int(data[24]) if len(data) > 24 else 8


def validation_inputs(paths: list[Any], limit: int = 500) -> list[dict[str, Any]]:
    """Profiles of up to `limit` evenly spaced images of an evaluation set (the reference a model's
    live inputs are compared with); an unreadable file is skipped, as evaluation would have failed
    on it first."""
    if not paths:
        return []
    picks = sorted({int(i) for i in np.linspace(0, len(paths) - 1, min(limit, len(paths)))})
    out = []
    for i in picks:
        try:
            out.append(profile_file(paths[i]))
        except Exception:  # noqa: BLE001 - a reference is a summary; one odd file must not stop it
            continue
    return out


def preprocess_profiled(data: bytes, spec: Any) -> tuple[Any, dict[str, Any] | None]:
    """(model input, profile) of one DICOM object, decoding its pixels once.

    The tensor is exactly `preprocess.preprocess(data, spec)`; the profile is None when it cannot be
    measured, which never fails the image: monitoring must not stop a prediction."""
    from .preprocess import PNG_MAGIC, _parse_dicom, dicom_to_unit, preprocess, to_tensor
    if data.startswith(PNG_MAGIC):
        return preprocess(data, spec), None
    ds = _parse_dicom(data)
    unit = dicom_to_unit(ds)
    tensor = to_tensor(unit, spec)
    try:
        profile = dicom_profile(ds, unit)
    except Exception:  # noqa: BLE001 - an odd attribute value costs the profile, never the prediction
        profile = None
    return tensor, profile
