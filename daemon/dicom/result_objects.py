"""The objects sent back to the PACS, built from plain values: a Comprehensive SR and a heatmap SC.

Both carry the ORIGINAL patient/study identifiers (the caller opens the re-identification map) so
the PACS files them into the patient's own study, next to the radiographs they describe. Nothing
here touches the database, the network or settings: given the same values it builds the same
objects, which is what lets `tests/daemon/dicom/test_result_objects.py` check them without a daemon.

The SR's Series and SOP Instance UIDs are derived from the study pseudonym, model version and the
set of source images (not random), so a retry after a lost C-STORE response re-sends the *same*
instance and the PACS overwrites it instead of filing a duplicate report.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Iterable, Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

MANUFACTURER = "cxrd"
MODEL_NAME = "cxrd DenseNet121 ChestX-ray14"
DISCLAIMER = ("Computer-generated findings from an AI model. Not for diagnostic use without "
              "physician review.")
SCHEME = "99CXRD"  # private coding scheme: ChestX-ray14 findings have no one-to-one standard codes
MAX_HEATMAP_SIDE = 1024

# Concept names. Standard DCM/LOINC/SNOMED codes where they fit, the private scheme otherwise.
REPORT_TITLE = Code("18748-4", "LN", "Diagnostic imaging report")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
COMMENT = Code("121106", "DCM", "Comment")
FINDING = Code("121071", "DCM", "Finding")
SOURCE_IMAGE = Code("121112", "DCM", "Source of Measurement")
PROBABILITY = Code("PROB", SCHEME, "Model probability")
OPERATING_POINT = Code("THRESH", SCHEME, "Operating point")
CALL = Code("CALL", SCHEME, "Result at operating point")
POSITIVE = Code("10828004", "SCT", "Positive")
NEGATIVE = Code("260385009", "SCT", "Negative")
NO_UNITS = Code("1", "UCUM", "no units")


class ReportError(ValueError):
    """A report cannot be built from these values; the message is safe to log (no identifiers)."""


@dataclass(frozen=True)
class StudyIdentity:
    """Original identifiers of the study, as opened from the re-identification map."""
    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    issuer_of_patient_id: str = ""
    accession_number: str = ""
    study_date: str = ""


@dataclass(frozen=True)
class SourceImage:
    """One radiograph the report is about, by its ORIGINAL UIDs (what the PACS knows)."""
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str


@dataclass(frozen=True)
class Finding:
    label: str
    probability: float
    threshold: float
    positive: bool


def finding_code(label: str) -> Code:
    return Code(label.upper().replace(" ", "_"), SCHEME, label)


def study_findings(per_image: Iterable[Sequence[Finding]]) -> list[Finding]:
    """One finding per label for the whole study: the highest probability over its images.

    A finding seen in any view is present in the patient, so the study-level call is the maximum;
    the operating point stays the model's (same for every image of one model version).
    """
    best: dict[str, Finding] = {}
    order: list[str] = []
    for findings in per_image:
        for f in findings:
            if f.label not in best:
                order.append(f.label)
                best[f.label] = f
            elif f.probability > best[f.label].probability:
                best[f.label] = f
    return [Finding(lbl, best[lbl].probability, best[lbl].threshold, best[lbl].probability >= best[lbl].threshold)
            for lbl in order]


def report_uids(study_pseudonym: str, model_version: str, kind: str,
                instance_pseudonyms: Iterable[str]) -> tuple[str, str]:
    """(series UID, SOP instance UID) for one report object, stable across retries of the same content."""
    sources = sorted(instance_pseudonyms)
    return (_uid("cxrd-series", study_pseudonym, model_version, kind),
            _uid("cxrd-sop", study_pseudonym, model_version, kind, *sources))


_UID_NAMESPACE = uuid.UUID("6f1c2a52-3c1e-4d1b-9a57-2f1e0c7d9b11")


def _uid(*parts: str) -> str:
    """A `2.25.<uuid>` UID that is a function of `parts` (name-based UUID, PS3.5 B.2)."""
    return "2.25." + str(uuid.uuid5(_UID_NAMESPACE, "\x00".join(parts)).int)


def _evidence(identity: StudyIdentity, image: SourceImage) -> Dataset:
    """A header-only stand-in for a source image: highdicom copies patient/study from evidence[0]
    and lists every evidence item in the Current Requested Procedure Evidence Sequence."""
    ds = Dataset()
    ds.SOPClassUID = image.sop_class_uid
    ds.SOPInstanceUID = image.sop_instance_uid
    ds.SeriesInstanceUID = image.series_uid
    ds.StudyInstanceUID = identity.study_uid
    ds.PatientID = identity.patient_id
    ds.PatientName = identity.patient_name
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.AccessionNumber = identity.accession_number
    ds.StudyDate = identity.study_date
    ds.StudyTime = ""
    ds.StudyID = ""
    ds.ReferringPhysicianName = ""
    return ds


def _finding_item(f: Finding) -> hd.sr.CodeContentItem:
    item = hd.sr.CodeContentItem(name=FINDING, value=finding_code(f.label), relationship_type="CONTAINS")
    item.ContentSequence = hd.sr.ContentSequence([
        hd.sr.NumContentItem(name=PROBABILITY, value=round(float(f.probability), 6), unit=NO_UNITS,
                             relationship_type="HAS PROPERTIES"),
        hd.sr.NumContentItem(name=OPERATING_POINT, value=round(float(f.threshold), 6), unit=NO_UNITS,
                             relationship_type="HAS PROPERTIES"),
        hd.sr.CodeContentItem(name=CALL, value=POSITIVE if f.positive else NEGATIVE,
                              relationship_type="HAS PROPERTIES"),
    ])
    return item


def build_sr(identity: StudyIdentity, images: Sequence[SourceImage], findings: Sequence[Finding], *,
             model_version: str, series_uid: str, sop_uid: str, model_name: str = MODEL_NAME,
             institution: str | None = None) -> Dataset:
    """A Comprehensive SR in the original study: model, disclaimer, each finding, the source images."""
    if not images:
        raise ReportError("a report needs at least one source image")
    if not identity.study_uid:
        raise ReportError("a report needs the original Study Instance UID")
    children = [
        hd.sr.TextContentItem(name=ALGORITHM_NAME, value=model_name, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(name=ALGORITHM_VERSION, value=model_version, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(name=COMMENT, value=DISCLAIMER, relationship_type="CONTAINS"),
        *(_finding_item(f) for f in findings),
        *(hd.sr.ImageContentItem(name=SOURCE_IMAGE, referenced_sop_class_uid=im.sop_class_uid,
                                 referenced_sop_instance_uid=im.sop_instance_uid, relationship_type="CONTAINS")
          for im in images),
    ]
    root = hd.sr.ContainerContentItem(name=REPORT_TITLE)
    root.ContentSequence = hd.sr.ContentSequence(children)
    sr = hd.sr.ComprehensiveSR(
        evidence=[_evidence(identity, im) for im in images], content=root,
        series_instance_uid=series_uid, series_number=9901, sop_instance_uid=sop_uid, instance_number=1,
        manufacturer=MANUFACTURER, institution_name=institution, is_complete=True, is_final=False,
        is_verified=False)
    sr.SeriesDescription = "AI findings (not for diagnostic use without review)"
    sr.ManufacturerModelName = model_name[:64]
    sr.SoftwareVersions = model_version[:64]
    if identity.issuer_of_patient_id:
        sr.IssuerOfPatientID = identity.issuer_of_patient_id
    return sr


def build_heatmap_sc(identity: StudyIdentity, source: SourceImage, picture: np.ndarray, *, label: str,
                     probability: float, model_version: str, series_uid: str, sop_uid: str,
                     patient_orientation: str = "", burned_in_annotation: str = "") -> Dataset:
    """An RGB Secondary Capture of the Grad-CAM overlay for one finding, in the original study.

    Patient Orientation is copied from the source radiograph when it has one, else left empty
    (type 2): guessing "L\\F" for a film we did not look at could mislead a reader.
    Burned In Annotation is the source radiograph's (its pixels are in the picture): YES or NO as the
    source says, absent when the source does not say (type 3; claiming NO would be a guess).
    """
    if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
        raise ReportError("heatmap picture must be an HxWx3 uint8 array")
    sc = hd.sc.SCImage(
        pixel_array=picture, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=identity.study_uid, series_instance_uid=series_uid, series_number=9902,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER,
        patient_id=identity.patient_id, patient_name=identity.patient_name, patient_birth_date="",
        patient_sex=None, accession_number=identity.accession_number or None,
        study_date=identity.study_date or None,
        patient_orientation=("L", "F"))  # placeholder highdicom insists on; replaced below
    sc.SeriesDescription = "AI heatmap (not for diagnostic use without review)"
    sc.ImageComments = (f"Grad-CAM of {label} (p={probability:.3f}), model {model_version}. "
                        f"{DISCLAIMER}")[:10240]
    sc.DerivationDescription = f"Grad-CAM overlay of {label} from model {model_version}"
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.sop_class_uid
    ref.ReferencedSOPInstanceUID = source.sop_instance_uid
    sc.SourceImageSequence = [ref]
    burned_in = burned_in_annotation.strip().upper()
    if burned_in in ("YES", "NO"):
        sc.BurnedInAnnotation = burned_in
    elif "BurnedInAnnotation" in sc:
        del sc.BurnedInAnnotation
    sc.PatientOrientation = patient_orientation
    if identity.issuer_of_patient_id:
        sc.IssuerOfPatientID = identity.issuer_of_patient_id
    return sc


def heatmap_picture(module, tensor, image: np.ndarray, label: str) -> np.ndarray:  # noqa: ANN001
    """Grad-CAM of `label` for the model's input `tensor`, drawn over the radiograph `image` ([0, 1]).

    The radiograph is shrunk to at most MAX_HEATMAP_SIDE pixels on its long side: the overlay is a
    pointer for the reader, not a diagnostic image, and a 3000x2500 RGB object would be 22 MB.
    """
    from cxrmodel.gradcam import gradcam, overlay

    return overlay(fit_for_overlay(image), gradcam(module, tensor, label))


def fit_for_overlay(image: np.ndarray, max_side: int = MAX_HEATMAP_SIDE) -> np.ndarray:
    """The [0, 1] radiograph shrunk (area average) so its long side is at most `max_side`."""
    h, w = image.shape
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return image
    import torch
    import torch.nn.functional as F
    t = torch.as_tensor(image, dtype=torch.float32)[None, None]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(t, size=size, mode="area")[0, 0].numpy()


def read_kind(ds: Dataset) -> str:
    """"sr" or "heatmap": how logs and audit rows name an object we built."""
    return "sr" if str(ds.get("Modality", "")) == "SR" else "heatmap"


def to_bytes(ds: Dataset) -> bytes:
    """The object as a DICOM Part 10 file (what dsrdump and Orthanc's REST API read)."""
    from io import BytesIO
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def read(data: bytes) -> Dataset:
    from io import BytesIO
    return pydicom.dcmread(BytesIO(data))
