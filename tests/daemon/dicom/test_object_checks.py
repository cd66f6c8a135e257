"""The check every object passes before it is sent: a good SR and SC pass, and each kind of
breakage is refused with a one-line message that names the attribute or content item, never a value."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import generate_uid

from cxrmodel.labels import LABELS
from daemon.dicom import result_objects as report
from daemon.dicom.object_checks import ObjectCheckError, check_object

IDENTITY = report.StudyIdentity(study_uid=generate_uid(), patient_id="PID-77", patient_name="DOE^JANE",
                                accession_number="ACC-5", study_date="20240131")
DX = "1.2.840.10008.5.1.4.1.1.1.1"
MODEL = report.ModelIdentity("v7", "ab" * 32)


def _sr(identity: report.StudyIdentity = IDENTITY):  # noqa: ANN202
    images = [report.SourceImage(DX, generate_uid(), generate_uid()) for _ in range(2)]
    per_image = [[report.Finding(label, 0.3, 0.5, False) for label in LABELS] for _ in images]
    return report.build_sr(identity, images, per_image, model=MODEL, series_uid=generate_uid(),
                           sop_uid=generate_uid())


def _sc():  # noqa: ANN202
    picture = np.zeros((32, 24, 3), dtype=np.uint8)
    return report.build_heatmap_sc(IDENTITY, report.SourceImage(DX, generate_uid(), generate_uid()), picture,
                                   label="Effusion", probability=0.6, model_version="v7",
                                   series_uid=generate_uid(), sop_uid=generate_uid())


def _items(ds, meaning: str) -> list:  # noqa: ANN001
    return [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def test_the_objects_cxrd_builds_pass():
    for ds in (_sr(), _sc()):
        assert check_object(report.to_bytes(ds)).SOPInstanceUID == ds.SOPInstanceUID


def _broken_sr_cases():  # noqa: ANN202
    def missing_patient_id(ds):  # noqa: ANN001, ANN202
        del ds.PatientID

    def overlong_accession(ds):  # noqa: ANN001, ANN202 - a modality's 20-character accession (SH is 16)
        ds.AccessionNumber = "A" * 20

    def image_not_in_evidence(ds):  # noqa: ANN001, ANN202
        group = _items(_items(ds, "Imaging Measurements")[0], "Measurement Group")[0]
        image = [i for i in group.ContentSequence if i.ValueType == "IMAGE"][0]
        image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = generate_uid()

    def number_without_units(ds):  # noqa: ANN001, ANN202
        group = _items(_items(ds, "Imaging Measurements")[0], "Measurement Group")[0]
        num = [i for i in group.ContentSequence if i.ValueType == "NUM"][0]
        del num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence

    def code_without_meaning(ds):  # noqa: ANN001, ANN202
        del _items(ds, "Procedure reported")[0].ConceptCodeSequence[0].CodeMeaning

    def wrong_template(ds):  # noqa: ANN001, ANN202
        ds.ContentTemplateSequence[0].TemplateIdentifier = "2000"

    def no_device_uid(ds):  # noqa: ANN001, ANN202
        for item in ds.ContributingEquipmentSequence:
            if "DeviceUID" in item:
                del item.DeviceUID

    def bad_relationship(ds):  # noqa: ANN001, ANN202
        ds.ContentSequence[0].RelationshipType = "IS ABOUT"

    def bad_uid(ds):  # noqa: ANN001, ANN202
        ds.SeriesInstanceUID = "1.2.03.x"

    return [(missing_patient_id, "PatientID is missing"), (overlong_accession, "AccessionNumber is not a valid SH"),
            (image_not_in_evidence, "not in the Current Requested Procedure Evidence"),
            (number_without_units, "units"), (code_without_meaning, "meaning missing"),
            (wrong_template, "TID 1500"), (no_device_uid, "Device UID"), (bad_relationship, "relationship type"),
            (bad_uid, "SeriesInstanceUID is not a valid")]


@pytest.mark.parametrize("breakage,message", _broken_sr_cases(), ids=lambda v: getattr(v, "__name__", ""))
def test_a_broken_sr_is_refused_with_a_message_naming_the_problem(breakage, message):  # noqa: ANN001
    ds = _sr()
    breakage(ds)
    with pytest.raises(ObjectCheckError, match=message) as caught:
        check_object(report.to_bytes(ds))
    text = str(caught.value)
    assert "\n" not in text and "PID-77" not in text and "DOE" not in text and "AAAA" not in text


def test_a_heatmap_whose_pixels_do_not_match_its_header_is_refused():
    ds = _sc()
    ds.PixelData = ds.PixelData[:-30]
    with pytest.raises(ObjectCheckError, match="Pixel Data holds"):
        check_object(report.to_bytes(ds))
    ds = _sc()
    ds.BurnedInAnnotation = "MAYBE"
    with pytest.raises(ObjectCheckError, match="Burned In Annotation"):
        check_object(report.to_bytes(ds))


def test_garbage_and_foreign_objects_are_refused():
    with pytest.raises(ObjectCheckError, match="not a readable DICOM"):
        check_object(b"\x00" * 128 + b"DICM" + b"\xff" * 40)
    ds = _sc()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    with pytest.raises(ObjectCheckError, match="not one cxrd sends"):
        check_object(report.to_bytes(ds))
