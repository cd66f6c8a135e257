"""Is this dataset a human chest radiograph? The documented rule ingest applies before storing.

An image is processed only if all of these hold (README "Which images are processed"):
1. its SOP class is CR, DX (for presentation or processing) or a single-frame Secondary Capture;
2. Modality is CR or DX (a Secondary Capture must say which: the NIH DICOMs are SC with Modality DX);
3. it carries pixel data, one frame, one sample per pixel (grayscale);
4. BodyPartExamined, when present, is one of the configured chest values;
5. nothing in the descriptive attributes names another body part or a non-human patient
   (dental, skull, knee, ...; canine, feline, veterinary, ...), and PatientSpeciesDescription,
   when present, is human;
6. at least `min_size` pixels on each side (thumbnails and rescaled copies are not diagnostic
   radiographs).
The checks run in this order and the first that fails is the reason given.
Which of the accepted images the model then sees (frontal views only) is `view_rule`'s decision.
Everything else is acknowledged and ignored (or rejected, if configured) and audited either way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SC_GRAYSCALE_BYTE = "1.2.840.10008.5.1.4.1.1.7.2"
SC_GRAYSCALE_WORD = "1.2.840.10008.5.1.4.1.1.7.3"
XRAY_CLASSES = {CR, DX_PRESENTATION, DX_PROCESSING, SECONDARY_CAPTURE, SC_GRAYSCALE_BYTE, SC_GRAYSCALE_WORD}
SOP_NAMES = {CR: "CR", DX_PRESENTATION: "DX", DX_PROCESSING: "DX-processing", SECONDARY_CAPTURE: "SC",
             SC_GRAYSCALE_BYTE: "SC-grayscale-byte", SC_GRAYSCALE_WORD: "SC-grayscale-word"}

_DESCRIPTIVE = ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName",
                "AcquisitionDeviceProcessingDescription", "PerformedProcedureStepDescription",
                "RequestedProcedureDescription", "ImageComments")
_OTHER_BODY_PART_WORDS = re.compile(
    r"\b(TEETH|TOOTH|DENTAL|PANORAMIC|PANO|OPG|SKULL|SINUS|MANDIBLE|CERVICAL|HAND|WRIST|FINGER|"
    r"ELBOW|FOREARM|HUMERUS|SHOULDER|PELVIS|HIP|FEMUR|KNEE|TIBIA|ANKLE|FOOT|ABDOMEN|ABDO|KUB|LUMBAR|"
    r"MAMMO|BREAST)\b")
_NOT_HUMAN_WORDS = re.compile(
    r"\b(CANINE|FELINE|EQUINE|BOVINE|DOG|CAT|HORSE|VETERINARY|VETERINARIAN|VET|PHANTOM)\b")
_HUMAN = {"", "HUMAN", "HOMO SAPIENS"}


@dataclass(frozen=True)
class ChestRule:
    body_parts: frozenset[str]
    min_size: int = 256


def chest_rule_from(body_parts: list[str], min_size: int) -> ChestRule:
    """The rule as configured (`dicom.chest_body_parts`, `dicom.min_image_size`): one construction
    for ingest and `cxrd predict`, so both apply the same rule."""
    return ChestRule(frozenset(p.strip().upper() for p in body_parts), min_size)


@dataclass(frozen=True)
class Verdict:
    chest: bool
    reason: str
    sop_class: str


def is_chest_radiograph(ds: Dataset, rule: ChestRule) -> Verdict:
    sop_class = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None),
                                                          "MediaStorageSOPClassUID", "") or "")
    name = SOP_NAMES.get(sop_class, "other")

    def no(reason: str) -> Verdict:
        return Verdict(False, reason, name)

    if sop_class not in XRAY_CLASSES:
        return no("SOP class is not CR, DX or Secondary Capture")
    modality = str(ds.get("Modality", "")).upper()
    if modality not in ("CR", "DX"):
        return no("modality is not CR or DX")
    if "PixelData" not in ds:
        return no("no pixel data")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return no("multi-frame image")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return no("colour image")
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if body_part and body_part not in rule.body_parts:
        return no("body part examined is not a chest value")
    species = str(ds.get("PatientSpeciesDescription", "") or "").strip().upper()
    if species not in _HUMAN:
        return no("patient is not human")
    for keyword in _DESCRIPTIVE:
        text = str(ds.get(keyword, "") or "").upper()
        if text and _NOT_HUMAN_WORDS.search(text):
            return no(f"{keyword} names a non-human patient or a phantom")
        if text and _OTHER_BODY_PART_WORDS.search(text):
            return no(f"{keyword} names another body part")
    # Last, so that a small veterinary or dental image is refused for what it is, not for its size.
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if min(rows, cols) < rule.min_size:
        return no(f"image smaller than {rule.min_size} pixels")
    return Verdict(True, "chest radiograph", name)
