"""The last check on an object cxrd built, on the exact bytes that would go to the PACS.

`check_object(data)` re-reads the Part 10 bytes and raises `ObjectCheckError` with a one-line
reason when the object is not one we may send: unreadable, a SOP class we do not produce, a
required attribute missing or malformed (every element's value against its VR), a broken SR
content tree, an SR image reference that is not in its own evidence list, a heatmap Segmentation
that is not one FRACTIONAL frame derived from a source it lists, or pixel data whose length does
not match its header. It is a guard against our own regressions and against odd
source values (a 70-character accession number from a modality) turning into an invalid object
in a patient's record; the independent validators (dciodvfy, PixelMed) run in the test suite.

What must stay true: it never needs the network or a JVM, it takes milliseconds, and its messages
name attributes and content-item paths, never values (they are logged and audited; values carry
patient identifiers).
"""
from __future__ import annotations

from io import BytesIO
from typing import Iterator

import pydicom
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
TID_1500 = "1500"
MAX_DEPTH = 12  # TID 1500 -> 1501 -> 300 -> 320 is 4 levels; anything deeper is a bug

# Attributes (keyword, may be empty) every object we send must carry: type 1 ones non-empty, type 2
# ones present. Patient, study, series and SOP identity decide where the PACS files the object.
_COMMON: tuple[tuple[str, bool], ...] = (
    ("SOPClassUID", False), ("SOPInstanceUID", False), ("StudyInstanceUID", False),
    ("SeriesInstanceUID", False), ("Modality", False), ("PatientID", True), ("PatientName", True),
    ("PatientBirthDate", True), ("PatientSex", True), ("StudyDate", True), ("StudyTime", True),
    ("AccessionNumber", True), ("ReferringPhysicianName", True), ("StudyID", True),
    ("SeriesNumber", True), ("InstanceNumber", True), ("Manufacturer", True),
)
_SR: tuple[tuple[str, bool], ...] = (
    ("ValueType", False), ("ConceptNameCodeSequence", False), ("ContinuityOfContent", False),
    ("ContentTemplateSequence", False), ("CompletionFlag", False), ("VerificationFlag", False),
    ("ContentDate", False), ("ContentTime", False), ("ContentSequence", False),
    ("CurrentRequestedProcedureEvidenceSequence", False), ("ContributingEquipmentSequence", False),
)
_SC: tuple[tuple[str, bool], ...] = (
    ("ConversionType", False), ("Rows", False), ("Columns", False), ("SamplesPerPixel", False),
    ("PhotometricInterpretation", False), ("BitsAllocated", False), ("BitsStored", False),
    ("HighBit", False), ("PixelRepresentation", False), ("PixelData", False),
    ("SourceImageSequence", False), ("PatientOrientation", True),
)
# The heatmap Segmentation (daemon/dicom/heatmap_map.py): one FRACTIONAL frame on the source's grid.
_SEG: tuple[tuple[str, bool], ...] = (
    ("ImageType", False), ("ContentLabel", False), ("SegmentationType", False),
    ("SegmentationFractionalType", False), ("MaximumFractionalValue", False), ("SegmentSequence", False),
    ("Rows", False), ("Columns", False), ("SamplesPerPixel", False), ("PhotometricInterpretation", False),
    ("BitsAllocated", False), ("BitsStored", False), ("HighBit", False), ("PixelRepresentation", False),
    ("NumberOfFrames", False), ("PixelData", False), ("SharedFunctionalGroupsSequence", False),
    ("PerFrameFunctionalGroupsSequence", False), ("DimensionIndexSequence", False),
    ("ReferencedSeriesSequence", False), ("ContentDate", False), ("ContentTime", False),
    ("PatientOrientation", True),
)
_SEGMENT: tuple[tuple[str, bool], ...] = (
    ("SegmentNumber", False), ("SegmentLabel", False), ("SegmentAlgorithmType", False),
    ("SegmentedPropertyCategoryCodeSequence", False), ("SegmentedPropertyTypeCodeSequence", False),
)

_VALUE_OF = {"CODE": "ConceptCodeSequence", "NUM": "MeasuredValueSequence", "TEXT": "TextValue",
             "UIDREF": "UID", "CONTAINER": "ContinuityOfContent", "IMAGE": "ReferencedSOPSequence",
             "COMPOSITE": "ReferencedSOPSequence", "DATE": "Date", "TIME": "Time", "DATETIME": "DateTime",
             "PNAME": "PersonName", "SCOORD": "GraphicData", "SCOORD3D": "GraphicData", "TCOORD": "TemporalRangeType"}
_RELATIONSHIPS = {"CONTAINS", "HAS PROPERTIES", "HAS CONCEPT MOD", "HAS OBS CONTEXT", "HAS ACQ CONTEXT",
                  "INFERRED FROM", "SELECTED FROM"}


_BINARY = {"US", "UL", "SS", "SL", "FL", "FD", "UV", "SV", "AT"}


class ObjectCheckError(ValueError):
    """The object must not be sent; the message is one line naming what is wrong (no values)."""


def check_object(data: bytes) -> Dataset:
    """The object read back from `data`, or ObjectCheckError saying why it may not be sent."""
    try:
        ds = pydicom.dcmread(BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as exc:
        raise ObjectCheckError(f"not a readable DICOM Part 10 object ({type(exc).__name__})") from None
    meta = ds.file_meta
    if not meta.get("TransferSyntaxUID") or not meta.get("MediaStorageSOPClassUID") or len(ds) == 0:
        raise ObjectCheckError("not a readable DICOM Part 10 object (file meta or dataset missing)")
    if str(meta.get("MediaStorageSOPInstanceUID", "")) != str(ds.get("SOPInstanceUID", "")):
        raise ObjectCheckError("file meta Media Storage SOP Instance UID differs from SOP Instance UID")
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == COMPREHENSIVE_3D_SR:
        _require(ds, _COMMON + _SR, "")
        _check_elements(ds, "")
        _check_sr(ds)
    elif sop_class == SECONDARY_CAPTURE:
        _require(ds, _COMMON + _SC, "")
        _check_elements(ds, "")
        _check_pixels(ds)
    elif sop_class == SEGMENTATION:
        _require(ds, _COMMON + _SEG, "")
        _check_elements(ds, "")
        _check_seg(ds)
        _check_pixels(ds)
    else:
        raise ObjectCheckError("SOP Class is not one cxrd sends (Comprehensive 3D SR, Secondary Capture "
                               "or Segmentation)")
    return ds


def _require(ds: Dataset, attrs: tuple[tuple[str, bool], ...], where: str) -> None:
    for keyword, may_be_empty in attrs:
        if keyword not in ds:
            raise ObjectCheckError(f"{where or 'dataset'}: {keyword} is missing")
        if not may_be_empty and (ds[keyword].value is None or ds[keyword].value == ""
                                 or (ds[keyword].VR == "SQ" and len(ds[keyword].value) == 0)):
            raise ObjectCheckError(f"{where or 'dataset'}: {keyword} is empty")


def _check_elements(ds: Dataset, where: str) -> None:
    """Every element's value against its VR (length, character repertoire, UID and date syntax)."""
    for elem in ds:
        name = f"{where}{elem.keyword or elem.tag}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value, 1):
                _check_elements(item, f"{name}[{i}].")
            continue
        if elem.tag == 0x7FE00010 or elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        for value in values:
            if value is None or value == "":
                continue
            try:
                pydicom.valuerep.validate_value(elem.VR, value if elem.VR in _BINARY else str(value),
                                                config.RAISE)
            except (ValueError, TypeError):
                raise ObjectCheckError(f"{name} is not a valid {elem.VR} value") from None
        if elem.VR == "UI":
            for value in values:
                if value and not UID(str(value)).is_valid:
                    raise ObjectCheckError(f"{name} is not a valid UID")


def _check_sr(ds: Dataset) -> None:
    if ds.ValueType != "CONTAINER":
        raise ObjectCheckError("SR root is not a CONTAINER")
    templates = ds.ContentTemplateSequence
    if len(templates) != 1 or str(templates[0].get("TemplateIdentifier", "")) != TID_1500 \
            or str(templates[0].get("MappingResource", "")) != "DCMR":
        raise ObjectCheckError("SR root does not declare template DCMR TID 1500")
    _check_code(ds.ConceptNameCodeSequence, "root concept name")
    if not any(e.get("DeviceUID") and e.get("PurposeOfReferenceCodeSequence")
               for e in ds.ContributingEquipmentSequence):
        raise ObjectCheckError("Contributing Equipment Sequence lacks the model's Device UID and purpose")
    evidence = {str(ref.ReferencedSOPInstanceUID)
                for study in ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.get("ReferencedSeriesSequence", [])
                for ref in series.get("ReferencedSOPSequence", [])}
    images = 0
    for path, item in _walk(ds.ContentSequence, "1", 1):
        vt = str(item.get("ValueType", ""))
        if vt not in _VALUE_OF:
            raise ObjectCheckError(f"content item {path}: unknown value type")
        if str(item.get("RelationshipType", "")) not in _RELATIONSHIPS:
            raise ObjectCheckError(f"content item {path}: missing or unknown relationship type")
        if "ConceptNameCodeSequence" not in item and vt != "CONTAINER":
            raise ObjectCheckError(f"content item {path}: {vt} without a concept name")
        if "ConceptNameCodeSequence" in item:
            _check_code(item.ConceptNameCodeSequence, f"content item {path} concept name")
        value = _VALUE_OF[vt]
        if value not in item:
            raise ObjectCheckError(f"content item {path}: {vt} without {value}")
        if vt == "CODE":
            _check_code(item.ConceptCodeSequence, f"content item {path} value")
        elif vt == "NUM":
            _check_num(item, path)
        elif vt == "IMAGE":
            images += 1
            for ref in item.ReferencedSOPSequence:
                if str(ref.get("ReferencedSOPInstanceUID", "")) not in evidence:
                    raise ObjectCheckError(f"content item {path}: references an image that is not in the "
                                           "Current Requested Procedure Evidence Sequence")
    if not images:
        raise ObjectCheckError("SR references no source image")


def _walk(seq, prefix: str, depth: int) -> Iterator[tuple[str, Dataset]]:  # noqa: ANN001 - pydicom Sequence
    if depth > MAX_DEPTH:
        raise ObjectCheckError(f"content tree deeper than {MAX_DEPTH} levels at {prefix}")
    for i, item in enumerate(seq, 1):
        path = f"{prefix}.{i}"
        yield path, item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence, path, depth + 1)


def _check_code(seq, where: str) -> None:  # noqa: ANN001 - pydicom Sequence
    if len(seq) != 1:
        raise ObjectCheckError(f"{where}: needs exactly one code")
    code = seq[0]
    if not (code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue")) \
            or not code.get("CodingSchemeDesignator") or not code.get("CodeMeaning"):
        raise ObjectCheckError(f"{where}: code value, scheme or meaning missing")


def _check_num(item: Dataset, path: str) -> None:
    measured = item.MeasuredValueSequence
    if len(measured) != 1 or "NumericValue" not in measured[0]:
        raise ObjectCheckError(f"content item {path}: NUM without exactly one numeric value")
    _check_code(measured[0].get("MeasurementUnitsCodeSequence", []), f"content item {path} units")


def _check_seg(ds: Dataset) -> None:
    """The heatmap map: FRACTIONAL 8-bit monochrome, one segment, one frame, and that frame derived
    from a source image the object lists in its Referenced Series Sequence (a map that points at
    nothing, or at an image the PACS was not told about, cannot be laid over anything)."""
    if ds.SegmentationType != "FRACTIONAL" or ds.SegmentationFractionalType not in ("PROBABILITY", "OCCUPANCY"):
        raise ObjectCheckError("Segmentation is not FRACTIONAL PROBABILITY/OCCUPANCY")
    if ds.BitsAllocated != 8 or ds.SamplesPerPixel != 1 or ds.PhotometricInterpretation != "MONOCHROME2":
        raise ObjectCheckError("Segmentation pixels are not 8-bit MONOCHROME2")
    if not 1 <= int(ds.MaximumFractionalValue) <= 255:
        raise ObjectCheckError("Maximum Fractional Value is outside 1..255")
    if len(ds.SegmentSequence) != 1:
        raise ObjectCheckError("Segmentation does not hold exactly one segment")
    _require(ds.SegmentSequence[0], _SEGMENT, "SegmentSequence[1]")
    for keyword in ("SegmentedPropertyCategoryCodeSequence", "SegmentedPropertyTypeCodeSequence"):
        _check_code(ds.SegmentSequence[0][keyword].value, f"SegmentSequence[1].{keyword}")
    frames = ds.PerFrameFunctionalGroupsSequence
    if int(ds.NumberOfFrames) != 1 or len(frames) != 1:
        raise ObjectCheckError("Segmentation does not hold exactly one frame")
    listed = {str(ref.get("ReferencedSOPInstanceUID", ""))
              for series in ds.ReferencedSeriesSequence for ref in series.get("ReferencedInstanceSequence", [])}
    sources = [src for der in frames[0].get("DerivationImageSequence", [])
               for src in der.get("SourceImageSequence", [])]
    if not sources:
        raise ObjectCheckError("Segmentation frame is not derived from a source image")
    for src in sources:
        if str(src.get("ReferencedSOPInstanceUID", "")) not in listed:
            raise ObjectCheckError("Segmentation frame's source image is not in the Referenced Series Sequence")
        if str(src.get("SpatialLocationsPreserved", "")) != "YES":
            raise ObjectCheckError("Segmentation frame does not say it keeps its source's pixel grid")


def _check_pixels(ds: Dataset) -> None:
    """Pixel Data length must be what Rows x Columns x Samples x Bits Allocated says (native syntax)."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = ds.Rows * ds.Columns * ds.SamplesPerPixel * frames * ds.BitsAllocated // 8
    actual = len(ds.PixelData)
    if actual not in (expected, expected + 1):  # one pad byte keeps an odd length even
        raise ObjectCheckError(f"Pixel Data holds {actual} bytes where the header says {expected}")
    # Type 3 in the SC IOD: absent when the source said nothing (the SC copies its pixels and cannot
    # know), but never anything other than YES or NO when present.
    if "BurnedInAnnotation" in ds and str(ds.BurnedInAnnotation) not in ("YES", "NO"):
        raise ObjectCheckError("Burned In Annotation is neither YES nor NO")
