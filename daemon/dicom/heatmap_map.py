"""The Grad-CAM heatmap as a standard object a viewer overlays on the radiograph: a FRACTIONAL Segmentation.

The Secondary Capture (`result_objects.build_heatmap_sc`) is a picture with the film burned in; it
shows in any viewer but cannot be toggled, re-windowed or measured against. This object carries
only the attention values, one per pixel of the SOURCE radiograph (same Rows x Columns, frame
derived from the source with Spatial Locations Preserved YES), so a viewer that reads Segmentations
(OHIF, 3D Slicer, Weasis, most PACS web viewers) lays it over the original with an opacity and
colour of the reader's choosing.

Why a Segmentation and not a Parametric Map: chest radiographs are projection images without an
Image Plane module and usually without a Frame of Reference, and highdicom 0.28 cannot build a
Parametric Map for such a source (its frame-label dimension index is left without values and the
constructor fails). The FRACTIONAL Segmentation is the object highdicom and the viewers support
for a single 2-D source without a Frame of Reference, and its 8-bit fractions (0..255 = 0..1) are
the same information.

What must stay true:
- the grid is the source's: registration rests on equal Rows/Columns and the derivation
  reference, never on coordinates (there are none for a radiograph); without a Frame of
  Reference that reference is what DICOM takes as a one-to-one pixel match (PS3.3 A.51.5.1);
- the value is Grad-CAM's relative attention (1 = where the finding's score rose most in this
  film), not a per-pixel probability of disease; the segment description says so, because the
  standard's fractional type can only say PROBABILITY or OCCUPANCY;
- pixels the model never saw (outside its centre crop) are 0, not an extrapolation;
- like the SC it carries the ORIGINAL patient/study/source UIDs (the caller re-identifies), and
  its UIDs are derived by the caller so a retry overwrites rather than duplicates.
"""
from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from daemon.dicom import finding_codes as codes
from daemon.dicom.result_objects import (DISCLAIMER, MANUFACTURER, MODEL_NAME, ReportError, SourceImage,
                                         StudyIdentity, source_standin)

SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
SERIES_NUMBER = 9903
MAX_FRACTION = 255
# CID 7150 Segmentation Property Category: the findings are abnormal structures seen on the film.
CATEGORY = ("49755003", "SCT", "Morphologically abnormal structure")
MAX_SOURCE_PIXELS = 60_000_000  # a 7000x8000 film; beyond that the map would not be worth its size


def attention_on_grid(cam: np.ndarray, rows: int, columns: int, square: str) -> np.ndarray:
    """The model-input-space Grad-CAM `cam` (size x size, [0, 1]) put back on a rows x columns grid.

    Inverts `cxrmodel.preprocess.make_square` + resize: "stretch" resizes the map to the grid;
    "crop" resizes it to the centre square the model saw and leaves the cut-off sides at 0; "pad"
    resizes it to the padded square and cuts the padding off. Returns float32 in [0, 1].
    """
    import torch
    import torch.nn.functional as F

    if cam.ndim != 2 or rows < 1 or columns < 1:
        raise ReportError("attention map needs a 2-D Grad-CAM and a positive grid size")
    if square not in ("crop", "pad", "stretch"):
        raise ReportError(f"unknown squaring {square!r} (crop, pad or stretch)")
    t = torch.as_tensor(np.asarray(cam, dtype=np.float32))[None, None]

    def resized(h: int, w: int) -> np.ndarray:
        return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()

    if rows == columns or square == "stretch":
        return resized(rows, columns)
    if square == "crop":  # same arithmetic as make_square
        s = min(rows, columns)
        top, left = rows // 2 - s // 2, columns // 2 - s // 2
        out = np.zeros((rows, columns), dtype=np.float32)
        out[top:top + s, left:left + s] = resized(s, s)
        return out
    s = max(rows, columns)
    top, left = (s - rows) // 2, (s - columns) // 2
    return np.ascontiguousarray(resized(s, s)[top:top + rows, left:left + columns])


def _source_standin(identity: StudyIdentity, source: SourceImage, header: Dataset) -> Dataset:
    """What highdicom needs of the source: original UIDs and patient (re-identified by the caller),
    the grid (Rows, Columns, Pixel Spacing when it is a real one) and whether it was ever lossy.
    Deliberately no Frame of Reference or plane attributes: a radiograph has no 3-D geometry, and
    highdicom then references the source frame with Spatial Locations Preserved YES."""
    ds = source_standin(identity, source)
    ds.Modality = str(header.get("Modality", "") or "DX")
    ds.Rows = int(header.Rows)
    ds.Columns = int(header.Columns)
    spacing = _spacing(header)
    if spacing:
        ds.PixelSpacing = spacing
    if str(header.get("LossyImageCompression", "")) == "01":
        ds.LossyImageCompression = "01"
    return ds


def _spacing(header: Dataset) -> list[float] | None:
    """Pixel Spacing when the source states a usable one (two positive numbers), else None: some
    films say 0\\0, which validators reject and which would mislead a ruler in the viewer."""
    try:
        values = [float(v) for v in header.get("PixelSpacing", None) or []]
    except (TypeError, ValueError):
        return None
    return values if len(values) == 2 and all(v > 0 for v in values) else None


def build_heatmap_map(identity: StudyIdentity, source: SourceImage, header: Dataset, attention: np.ndarray, *,
                      label: str, probability: float, model_version: str, series_uid: str, sop_uid: str,
                      patient_orientation: str = "", model_name: str = MODEL_NAME) -> Dataset:
    """A FRACTIONAL Segmentation (PROBABILITY, 0..255) of the Grad-CAM of `label`, on the source's grid.

    `header` is the source radiograph's header (the vault's de-identified copy is fine: only its
    grid, pixel spacing and lossy flag are read); `attention` is rows x columns in [0, 1], e.g.
    from `attention_on_grid`. Patient Orientation is copied from the source, else left empty.
    """
    import highdicom as hd

    rows, columns = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
    if rows < 1 or columns < 1:
        raise ReportError("source header has no Rows/Columns")
    if rows * columns > MAX_SOURCE_PIXELS:
        raise ReportError(f"source grid {rows}x{columns} is too large for a heatmap map")
    if attention.shape != (rows, columns):
        raise ReportError("attention map is not on the source's pixel grid")
    values = np.nan_to_num(np.asarray(attention, dtype=np.float32), nan=0.0).clip(0.0, 1.0)
    finding = codes.finding_code(label)
    name = f"Grad-CAM {label.replace('_', ' ')}"
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=name[:64],
        segmented_property_category=hd.sr.CodedConcept(*CATEGORY),
        segmented_property_type=hd.sr.CodedConcept(finding.value, finding.scheme_designator, finding.meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model_name[:64], version=model_version[:64],
            family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence")))
    segment.SegmentDescription = ("Relative Grad-CAM attention (1 = strongest), not a per-pixel probability; "
                                  "0 outside the region the model saw")
    seg = hd.seg.Segmentation(
        source_images=[_source_standin(identity, source, header)], pixel_array=values,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[segment], series_instance_uid=series_uid, series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=model_name[:64], software_versions=model_version[:64],
        device_serial_number=model_version[:64],
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY, max_fractional_value=MAX_FRACTION,
        content_label="GRADCAM", content_description=f"AI attention map: {label}"[:64],
        series_description="AI heatmap overlay (not for diagnostic use without review)")
    seg.ImageComments = (f"Grad-CAM of {label} (p={probability:.3f}), model {model_version}. "
                         f"{DISCLAIMER}")[:10240]
    # Type 2C for an image without Image Orientation (Patient): what the source says, else empty.
    seg.PatientOrientation = patient_orientation
    # General Series Laterality (2C) is only for paired body parts; the chest is not one.
    seg.BodyPartExamined = "CHEST"
    if finding.scheme_designator == codes.PRIVATE_SCHEME:
        item = Dataset()
        item.CodingSchemeDesignator = codes.PRIVATE_SCHEME
        item.CodingSchemeName = "cxrd ChestX-ray14 finding codes"
        item.CodingSchemeResponsibleOrganization = MANUFACTURER
        seg.CodingSchemeIdentificationSequence = [item]
    if identity.issuer_of_patient_id:
        seg.IssuerOfPatientID = identity.issuer_of_patient_id
    return seg
