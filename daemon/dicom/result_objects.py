"""The objects sent back to the PACS, built from plain values: a TID 1500 SR and a heatmap SC.

The SR follows IHE AI Results (AIR) for an Evidence Creator: Comprehensive 3D SR, TID 1500 root,
the chest radiograph as procedure reported, one TID 1501 group per finding with study and per-image
probabilities, the algorithm as observer and as contributing equipment with a per-model Device UID.
Its coded concepts and their sources are in `finding_codes`; README "Structured report" shows the tree.

Both carry the ORIGINAL patient/study identifiers (the caller opens the re-identification map) so
the PACS files them into the patient's own study, next to the radiographs they describe. Nothing
here touches the database, the network or settings: given the same values it builds the same
objects, which is what lets `tests/daemon/dicom/test_result_objects.py` check them without a daemon.

The SR's Series and SOP Instance UIDs are derived from the study pseudonym, model version and the
set of source images (not random), so a retry after a lost C-STORE response re-sends the *same*
instance and the PACS overwrites it instead of filing a duplicate report. A heatmap's are derived
from the image and finding it shows (`heatmap_uids`), so a replacement report that shows the same
one re-sends the same instance rather than a second copy.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Iterable, Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from daemon.dicom import finding_codes as codes

MANUFACTURER = "cxrd"
MODEL_NAME = "cxrd DenseNet121 ChestX-ray14"
DISCLAIMER = ("Computer-generated findings from an AI model. Not for diagnostic use without "
              "physician review.")
MAX_HEATMAP_SIDE = 1024
SR_SERIES_NUMBER = 9901
COMBINATION_RULE = ("Study value: the highest probability over the analysed images; present when it "
                    "reaches the operating point.")


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
class NotAnalysedImage:
    """An image of the study the model did not see, and why, in the view rule's own words."""
    image: SourceImage
    view: str
    reason: str


@dataclass(frozen=True)
class PriorReport:
    """A report cxrd sent earlier for the same study and model, which a new one replaces."""
    series_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class HeatmapRef:
    """A heatmap object sent with a report: which finding on which image it shows, and its UID."""
    kind: str  # "heatmap" (the Secondary Capture) or "heatmap_map" (the Segmentation), as `read_kind` says
    sop_instance_uid: str
    label: str
    source: SourceImage


@dataclass(frozen=True)
class Finding:
    label: str
    probability: float
    threshold: float
    positive: bool


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


def heatmap_uids(study_pseudonym: str, model_version: str, kind: str, source_pseudonym: str,
                 label: str) -> tuple[str, str]:
    """(series UID, SOP instance UID) for a heatmap object: a function of the image and the finding it
    shows, not of the study's other images. A replacement report whose top finding is still on the
    same image therefore re-sends the very same instance (the PACS keeps one copy), and only a
    heatmap of another image or finding is a new instance. The series is the study's heatmap series
    of that kind, as `report_uids` gives it."""
    return (_uid("cxrd-series", study_pseudonym, model_version, kind),
            _uid("cxrd-heatmap", study_pseudonym, model_version, kind, source_pseudonym, label))


_UID_NAMESPACE = uuid.UUID("6f1c2a52-3c1e-4d1b-9a57-2f1e0c7d9b11")


def _uid(*parts: str) -> str:
    """A `2.25.<uuid>` UID that is a function of `parts` (name-based UUID, PS3.5 B.2)."""
    return "2.25." + str(uuid.uuid5(_UID_NAMESPACE, "\x00".join(parts)).int)


def source_standin(identity: StudyIdentity, image: SourceImage) -> Dataset:
    """A header-only stand-in for a source image (original UIDs and patient, re-identified by the
    caller): highdicom copies patient/study from the first source or evidence item and lists every
    evidence item in the Current Requested Procedure Evidence Sequence."""
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


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced the findings: what the report names and what its Device UID is made of."""
    version: str
    weights_sha256: str = ""
    name: str = MODEL_NAME

    @property
    def device_uid(self) -> str:
        """The algorithm as a DICOM device: the same weights under the same version always give the
        same UID, and any other model (retrained, rolled back to, imported) gives another."""
        return _uid("cxrd-device", self.version, self.weights_sha256.lower())


def _algorithm(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=model.name[:64], version=model.version[:64])


def _finding_group(label: str, per_image: Sequence[tuple[SourceImage, Finding]], combined: Finding,
                   model: ModelIdentity, sop_uid: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One TID 1501 group per finding: the study value (derivation Maximum), each image's value
    inferred from that image, the operating point, and the call at the operating point."""
    algorithm = _algorithm(model)
    refs = [hd.sr.SourceImageForMeasurement(im.sop_class_uid, im.sop_instance_uid) for im, _ in per_image]
    measurements = [hd.sr.Measurement(
        name=codes.PROBABILITY, value=round(float(combined.probability), 6), unit=codes.PROBABILITY_UNIT,
        derivation=codes.MAXIMUM if len(per_image) > 1 else None, algorithm_id=algorithm,
        referenced_images=refs)]
    if len(per_image) > 1:  # with one image the study value *is* that image's value
        measurements += [hd.sr.Measurement(
            name=codes.PROBABILITY, value=round(float(f.probability), 6), unit=codes.PROBABILITY_UNIT,
            algorithm_id=algorithm, referenced_images=[ref]) for (_, f), ref in zip(per_image, refs)]
    measurements.append(hd.sr.Measurement(
        name=codes.THRESHOLD_VALUE, value=round(float(combined.threshold), 6), unit=codes.PROBABILITY_UNIT,
        algorithm_id=algorithm))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid("cxrd-finding", sop_uid, label),
                                                     identifier=f"AI finding: {label.replace('_', ' ')}"),
        finding_type=codes.finding_code(label), algorithm_id=algorithm, measurements=measurements,
        source_images=[hd.sr.SourceImageForMeasurementGroup(im.sop_class_uid, im.sop_instance_uid)
                       for im, _ in per_image])


def not_analysed_text(item: NotAnalysedImage) -> str:
    """The line a reader sees for an image the model did not see: the view, the rule's reason and
    which image (its original SOP Instance UID, as the PACS shows it)."""
    view = f"{item.view} view" if item.view and item.view != "unknown" else "view not recognised"
    return f"Not analysed ({view}): {item.reason or 'not a frontal chest radiograph'}. " \
           f"Image {item.image.sop_instance_uid}"


def no_analysable_text(count: int) -> str:
    return (f"No finding is reported: no image of this study was analysed ({count} not analysed, each "
            "listed below with the reason). The model is made for frontal (PA/AP) chest radiographs only.")


def replacement_text(prior: PriorReport) -> str:
    return (f"This report replaces the earlier AI report {prior.sop_instance_uid} of this study: more "
            "images arrived after it was sent. The earlier report should no longer be used.")


_HEATMAP_NAMES = {"heatmap": "Secondary Capture", "heatmap_map": "Segmentation"}


def heatmap_text(current: Sequence[HeatmapRef], replacement: bool) -> str:
    """The line naming the heatmap objects that go with this report, so a reader can tell the current
    overlay from one an earlier report of the study left in the PACS (no C-STORE can remove it)."""
    first = current[0]
    objects = "; ".join(f"{_HEATMAP_NAMES.get(h.kind, h.kind)} {h.sop_instance_uid}" for h in current)
    text = (f"Current AI heatmap of this study: Grad-CAM of {first.label.replace('_', ' ')} on image "
            f"{first.source.sop_instance_uid} ({objects}).")
    if replacement:
        text += " Heatmaps sent with earlier reports of this study and not named here are out of date."
    return text


def _not_analysed_group(item: NotAnalysedImage, model: ModelIdentity,
                        sop_uid: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """When no image was analysed: one TID 1501 group per image, naming it as the source and saying
    in its tracking identifier that it was not analysed; no measurement, no finding."""
    label = f"Not analysed: {item.view} view" if item.view and item.view != "unknown" else "Not analysed"
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid("cxrd-not-analysed", sop_uid,
                                                              item.image.sop_instance_uid), identifier=label[:64]),
        algorithm_id=_algorithm(model),
        source_images=[hd.sr.SourceImageForMeasurementGroup(item.image.sop_class_uid, item.image.sop_instance_uid)])


def _qualitative_evaluations(combined: Sequence[Finding], not_analysed: Sequence[NotAnalysedImage] = (),
                             prior: PriorReport | None = None,
                             heatmaps: Sequence[HeatmapRef] = ()) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: the study-level call per finding at the model's operating point, the
    combination rule, the images not analysed (with why), what this report replaces, which heatmap
    objects are current, and the disclaimer a reader must see."""
    container = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    items: list = [hd.sr.CodeContentItem(name=codes.finding_code(f.label), value=codes.PRESENT if f.positive
                                    else codes.ABSENT, relationship_type="CONTAINS") for f in combined]
    notes = [COMBINATION_RULE] if combined else [no_analysable_text(len(not_analysed))]
    notes += [not_analysed_text(n) for n in not_analysed]
    if prior is not None:
        notes.append(replacement_text(prior))
    if heatmaps:
        notes.append(heatmap_text(heatmaps, prior is not None))
    notes.append(DISCLAIMER)
    items += [hd.sr.TextContentItem(name=codes.COMMENT, value=text[:1024], relationship_type="CONTAINS")
              for text in notes]
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def build_sr(identity: StudyIdentity, images: Sequence[SourceImage], findings_per_image: Sequence[Sequence[Finding]],
             *, model: ModelIdentity, series_uid: str, sop_uid: str, institution: str | None = None,
             not_analysed: Sequence[NotAnalysedImage] = (), replaces: PriorReport | None = None,
             heatmaps: Sequence[HeatmapRef] = ()) -> Dataset:
    """A Comprehensive 3D SR with TID 1500 (Imaging Measurement Report) as root, in the original study.

    The procedure reported is the chest radiograph; the observer is the algorithm as a device
    (Device Observer UID = `model.device_uid`, also in the Contributing Equipment Sequence). Each
    of the 14 findings is a TID 1501 measurement group (study and per-image probabilities, the
    operating point), and the study-level calls sit in the Qualitative Evaluations container with
    the disclaimer. `findings_per_image[i]` are the findings of `images[i]`.

    Images of the study the model did not see (`not_analysed`) are listed there too, each with its
    reason; they are not evidence of the findings, so they are not in the Current Requested
    Procedure Evidence unless no image was analysed at all, when the report says so instead of
    giving findings and those images are what it is about. `replaces`: the earlier report of the
    same study this one supersedes (Predecessor Documents Sequence, and a line saying so).
    `heatmaps`: the heatmap objects sent with this report, named in a line as the current ones.
    """
    if not images and not not_analysed:
        raise ReportError("a report needs at least one source image")
    if len(findings_per_image) != len(images):
        raise ReportError("a report needs the findings of each of its source images")
    if not identity.study_uid:
        raise ReportError("a report needs the original Study Instance UID")
    if not model.version:
        raise ReportError("a report needs the model version")
    combined = study_findings(findings_per_image)
    by_label = [{f.label: f for f in fs} for fs in findings_per_image]
    for f in combined:
        if any(f.label not in fs for fs in by_label):
            raise ReportError(f"finding {f.label} is missing for some source image")
    device = model.device_uid
    observer = hd.sr.ObserverContext(
        observer_type=codes.DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device, name=model.name[:64], manufacturer_name=MANUFACTURER, model_name=model.name[:64]))
    groups = [_finding_group(f.label, [(im, fs[f.label]) for im, fs in zip(images, by_label)], f, model, sop_uid)
              for f in combined]
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PLAIN_CHEST_XRAY,
        imaging_measurements=groups or [_not_analysed_group(n, model, sop_uid) for n in not_analysed],
        title=codes.IMAGING_MEASUREMENT_REPORT,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(codes.ENGLISH))
    content[0].ContentSequence.append(_qualitative_evaluations(combined, not_analysed, replaces, heatmaps))
    evidence = images if images else [n.image for n in not_analysed]
    previous = None
    if replaces is not None:
        prior = Dataset()
        prior.SOPClassUID = pydicom.uid.Comprehensive3DSRStorage
        prior.SOPInstanceUID = replaces.sop_instance_uid
        prior.SeriesInstanceUID = replaces.series_uid
        prior.StudyInstanceUID = identity.study_uid
        previous = [prior]
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=model.name[:64], software_versions=model.version[:64],
        contribution_description="AI inference: ChestX-ray14 findings computed from the source images")
    equipment.DeviceUID = device
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source_standin(identity, im) for im in evidence], content=content, previous_versions=previous,
        series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER, sop_instance_uid=sop_uid,
        instance_number=1, manufacturer=MANUFACTURER, institution_name=institution, is_complete=True,
        is_final=False, is_verified=False, contributing_equipment=[equipment])
    sr.SeriesDescription = "AI findings (not for diagnostic use without review)"
    sr.ManufacturerModelName = model.name[:64]
    sr.SoftwareVersions = model.version[:64]
    if any(c.code.scheme_designator == codes.PRIVATE_SCHEME for c in codes.FINDINGS):
        sr.CodingSchemeIdentificationSequence = [_private_scheme()]
    if identity.issuer_of_patient_id:
        sr.IssuerOfPatientID = identity.issuer_of_patient_id
    return sr


def _private_scheme() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = codes.PRIVATE_SCHEME
    item.CodingSchemeName = "cxrd ChestX-ray14 finding codes"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


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
    # General Series Laterality (2C) is needed only for a paired body part: saying the part is the
    # chest tells validators and viewers there is no side to record.
    sc.BodyPartExamined = "CHEST"
    if identity.issuer_of_patient_id:
        sc.IssuerOfPatientID = identity.issuer_of_patient_id
    return sc


def heatmap_picture(module, tensor, image: np.ndarray, label: str, *,  # noqa: ANN001
                    attention: np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM of `label` for the model's input `tensor`, drawn over the radiograph `image` ([0, 1]).

    The radiograph is shrunk to at most MAX_HEATMAP_SIDE pixels on its long side: the overlay is a
    pointer for the reader, not a diagnostic image, and a 3000x2500 RGB object would be 22 MB.
    `attention` is a Grad-CAM already put back on the radiograph's grid through the model's squaring
    (`heatmap_map.attention_on_grid`, shared with the map object); without it the model-input map
    is stretched over the film, which is right only for a square film or a stretching model.
    """
    from cxrmodel.gradcam import gradcam, overlay

    return overlay(fit_for_overlay(image), gradcam(module, tensor, label) if attention is None else attention)


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
    """"sr", "heatmap" (the SC) or "heatmap_map" (the Segmentation): how logs and audit rows name it."""
    modality = str(ds.get("Modality", ""))
    return "sr" if modality == "SR" else "heatmap_map" if modality == "SEG" else "heatmap"


def to_bytes(ds: Dataset) -> bytes:
    """The object as a DICOM Part 10 file (what dsrdump and Orthanc's REST API read)."""
    from io import BytesIO
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def read(data: bytes) -> Dataset:
    from io import BytesIO
    return pydicom.dcmread(BytesIO(data))
