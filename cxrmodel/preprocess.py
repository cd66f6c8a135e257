"""DICOM or PNG -> the tensor a model expects, through one path.

Both sources first become a float32 HxW image in [0, 1] where 1 is "bright" (bone white) as a
radiologist sees it; only then do the model-specific steps (square, resize, normalisation) run.
The model-specific part is a `PreprocessSpec` stored in the model's manifest, so a caller never
chooses the normalisation: the model that was trained with it does.

DICOM display pipeline (PS3.3 C.11): stored values -> Modality LUT (rescale slope/intercept or
LUT Sequence) -> VOI LUT (window centre/width or LUT Sequence) -> MONOCHROME1 inversion -> [0, 1].
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ImageError, ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

Source = Union[str, Path, bytes, "pydicom.Dataset"]  # noqa: F821  (pydicom imported lazily)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a [0, 1] radiograph becomes this model's input; serialised in the model manifest.

    value = lo + x * (hi - lo), then (value - mean[c]) / std[c] for each of `channels` channels.
    torchvision/ImageNet models: range (0, 1), ImageNet mean/std, 3 channels.
    TorchXRayVision models: range (-1024, 1024), mean 0, std 1, 1 channel.
    `square` says how a non-square image becomes square before resizing: "crop" (centre crop,
    what TorchXRayVision does), "pad" (centre pad with black) or "stretch".
    """
    size: int = 224
    channels: int = 3
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    square: str = "crop"
    interpolation: str = "bilinear"  # with antialias=True when shrinking

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ModelError(f"preprocessing: channels must be 1 or 3, not {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ModelError("preprocessing: mean and std need one value per channel")
        if self.square not in ("crop", "pad", "stretch"):
            raise ModelError(f"preprocessing: square must be crop, pad or stretch, not {self.square!r}")
        if self.interpolation not in ("bilinear", "bicubic", "area"):
            raise ModelError(f"preprocessing: unknown interpolation {self.interpolation!r}")
        if self.size < 16:
            raise ModelError(f"preprocessing: size {self.size} is too small")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PreprocessSpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ModelError(f"preprocessing: unknown keys {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kw)


TORCHVISION_SPEC = PreprocessSpec()
XRV_SPEC = PreprocessSpec(channels=1, value_range=(-1024.0, 1024.0), mean=(0.0,), std=(1.0,))


# ---------------------------------------------------------------- reading sources into [0, 1]

def load_image(source: Source) -> np.ndarray:
    """A DICOM file/bytes/Dataset or a PNG file/bytes as float32 HxW in [0, 1].

    The kind is recognised by content (PNG signature, else DICOM), not by file name, because
    PACS exports often have no extension.
    """
    import pydicom

    if isinstance(source, pydicom.Dataset):
        return dicom_to_unit(source)
    data = _read_bytes(source)
    if data.startswith(PNG_MAGIC):
        return png_to_unit(data)
    return dicom_to_unit(_parse_dicom(data))


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or type(exc).__name__}") from None


def png_to_unit(data: bytes | str | Path) -> np.ndarray:
    """An 8- or 16-bit grayscale PNG (ChestX-ray14's format) as float32 in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    raw = data if isinstance(data, bytes) else _read_bytes(data)
    try:
        with Image.open(io.BytesIO(raw)) as img:
            mode = img.mode
            if mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
                # A few ChestX-ray14 PNGs are RGBA with equal channels; accept those, reject real colour.
                rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
                if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
                    raise ImageError("colour image: a grayscale radiograph is required")
                arr, top = rgb[..., 0].astype(np.float32), 255.0
            elif mode in ("L", "LA"):
                arr, top = np.asarray(img.getchannel(0), dtype=np.float32), 255.0
            elif mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float32)
                top = 65535.0
            elif mode == "1":
                raise ImageError("bilevel image: a grayscale radiograph is required")
            else:
                raise ImageError(f"unsupported PNG mode {mode}")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"unreadable PNG ({type(exc).__name__})") from None
    return np.clip(arr / top, 0.0, 1.0)


def _parse_dicom(data: bytes):
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # a corrupt file can raise almost anything from inside the parser
        raise ImageError(f"not a PNG or DICOM file ({type(exc).__name__})") from None
    if "PixelData" not in ds:
        raise ImageError("not an image: no Pixel Data (is it a DICOM file?)")
    # ACR-NEMA style files (no preamble, no File Meta) carry no transfer syntax; pydicom knows the
    # encoding it parsed with, which is exactly the one the pixel data uses.
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if ds.is_implicit_VR else ExplicitVRLittleEndian
    return ds


def dicom_to_unit(ds) -> np.ndarray:
    """One DICOM image through Modality LUT, VOI LUT/window and MONOCHROME1 inversion to [0, 1]."""
    from pydicom.pixels import apply_voi

    if "PixelData" not in ds:
        raise ImageError("not an image: no Pixel Data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageError(f"multi-frame image ({frames} frames): one radiograph per instance is required")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(f"colour image ({photometric or 'unknown'}, {samples} samples): "
                         "a grayscale radiograph is required")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # decoders raise many types; none of their messages may leak PHI paths
        raise ImageError(f"cannot decode pixel data ({type(exc).__name__}; transfer syntax "
                         f"{ds.file_meta.get('TransferSyntaxUID', 'unknown')})") from None
    if stored.ndim != 2:
        raise ImageError(f"unexpected pixel array shape {tuple(stored.shape)}: one 2-D frame is required")
    if min(stored.shape) < 32:
        raise ImageError(f"image too small ({stored.shape[1]}x{stored.shape[0]})")

    try:
        values = _modality(ds, stored)
        lo, hi, windowed = _voi_range(ds, values)
        if "VOILUTSequence" in ds:
            values = np.asarray(apply_voi(values, ds, index=0), dtype=np.float32)
        elif windowed:
            values = _window(ds, values)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"invalid LUT or window attributes ({type(exc).__name__})") from None

    if hi > lo:
        unit = values if (lo, hi) == (0.0, 1.0) else (values - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    else:
        unit = np.zeros_like(values)
    unit = unit.astype(np.float32, copy=False)  # a fresh array (never `stored` itself): clip in place
    np.clip(unit, 0.0, 1.0, out=unit)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def _modality(ds, stored: np.ndarray) -> np.ndarray:
    """Modality LUT in float32 (exact for the <= 16-bit integers radiographs store, so float64 would only cost time)."""
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    values = stored.astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _voi_range(ds, values: np.ndarray) -> tuple[float, float, bool]:
    """The value range that maps to [0, 1] after the VOI step, and whether a window applies."""
    if "VOILUTSequence" in ds:
        desc = ds.VOILUTSequence[0].LUTDescriptor
        bits = int(desc[2])
        return 0.0, float(2 ** bits - 1), False
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return 0.0, 1.0, True
    # No VOI: 8-bit images (ChestX-ray14 exports, SC) use their full stored range so that the
    # same pixels as DICOM or PNG give the same input; deeper images rarely fill their bit range,
    # so they are stretched to the values present.
    if int(ds.get("BitsStored", 8)) <= 8 and "RescaleSlope" not in ds and "ModalityLUTSequence" not in ds:
        if int(ds.get("PixelRepresentation", 0)) == 1:
            return -128.0, 127.0, False
        return 0.0, 255.0, False
    return float(values.min()), float(values.max()), False


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS (several windows may be listed; the first is the default)."""
    from pydicom.multival import MultiValue

    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0]
    return float(value)


def _window(ds, x: np.ndarray) -> np.ndarray:
    """Window centre/width (first pair) to [0, 1] per PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
    if not math.isfinite(c) or not math.isfinite(w) or w <= 0:
        raise ImageError("invalid window centre/width")
    f32 = np.float32
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(f32(-4.0 / w) * (x - f32(c))))).astype(np.float32)
    if function == "LINEAR_EXACT":
        return (x - f32(c)) * f32(1.0 / w) + f32(0.5)
    if w < 1:
        raise ImageError("invalid window width for LINEAR (must be >= 1)")
    if w == 1:
        return (x >= c - 0.5).astype(np.float32)
    return (x - f32(c - 0.5)) * f32(1.0 / (w - 1)) + f32(0.5)


# ---------------------------------------------------------------- [0, 1] -> model input

def to_tensor(image: np.ndarray | torch.Tensor, spec: PreprocessSpec = TORCHVISION_SPEC) -> torch.Tensor:
    """A [0, 1] HxW image as the model's (C, size, size) float32 input."""
    x = torch.as_tensor(image, dtype=torch.float32)
    if x.ndim != 2:
        raise ImageError(f"expected a 2-D image, got shape {tuple(x.shape)}")
    x = make_square(x, spec.square)
    x = x[None, None]
    if x.shape[-1] != spec.size:
        mode = spec.interpolation
        if mode == "area":
            x = F.interpolate(x, size=(spec.size, spec.size), mode="area")
        else:
            x = F.interpolate(x, size=(spec.size, spec.size), mode=mode, align_corners=False,
                              antialias=x.shape[-1] > spec.size)
            if mode == "bicubic":
                x = x.clamp(0.0, 1.0)
    lo, hi = spec.value_range
    x = x[0] * (hi - lo) + lo
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
    return ((x.expand(spec.channels, -1, -1) - mean) / std).contiguous()


def make_square(x: torch.Tensor, how: str) -> torch.Tensor:
    """Centre crop or pad a HxW tensor to a square (stretch leaves it for the resize)."""
    h, w = x.shape[-2:]
    if h == w or how == "stretch":
        return x
    if how == "crop":
        s = min(h, w)
        top, left = h // 2 - s // 2, w // 2 - s // 2
        return x[..., top:top + s, left:left + s]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    return F.pad(x, (left, s - w - left, top, s - h - top), value=0.0)


def preprocess(source: Source, spec: PreprocessSpec = TORCHVISION_SPEC) -> torch.Tensor:
    """DICOM/PNG file, bytes or Dataset -> (C, size, size) model input. Raises ImageError."""
    return to_tensor(load_image(source), spec)


def preprocess_many(sources: list[Source], spec: PreprocessSpec = TORCHVISION_SPEC) -> torch.Tensor:
    """Several sources stacked as an (N, C, size, size) batch."""
    return torch.stack([preprocess(s, spec) for s in sources])
