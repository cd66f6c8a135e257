"""The view rule on real DICOM headers from the shared data, changed the way equipment writes them."""
from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from daemon.stages.chest_rule import chest_rule_from, is_chest_radiograph
from daemon.stages.view_rule import decide_view

NIH = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"      # no view attribute at all
SIIM = "dicom/chest/siim-acr_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"  # PA


def header(shared_data, name: str = NIH, **attrs) -> Dataset:  # noqa: ANN003
    ds = pydicom.dcmread(shared_data / name, stop_before_pixels=True)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


@pytest.mark.parametrize("position", ["PA", "AP", "pa", "AP SUPINE", "PA ERECT"])
def test_frontal_view_positions_are_analysed(shared_data, position):
    d = decide_view(header(shared_data, ViewPosition=position))
    assert d.analyse and d.view == "frontal" and "ViewPosition" in d.reason


@pytest.mark.parametrize("position,view", [("LL", "lateral"), ("RL", "lateral"), ("LATERAL", "lateral"),
                                           ("LAT", "lateral"), ("LLD", "decubitus"), ("RLD", "decubitus"),
                                           ("RLO", "oblique"), ("LLO", "oblique")])
def test_other_view_positions_are_not_analysed(shared_data, position, view):
    d = decide_view(header(shared_data, ViewPosition=position))
    assert not d.analyse and d.view == view
    assert d.reason.startswith(f"{view} view (ViewPosition") and "frontal views only" in d.reason


@pytest.mark.parametrize("value,scheme,view", [
    ("399173006", "SCT", "lateral"), ("R-10236", "SRT", "lateral"), ("399198007", "SCT", "lateral"),
    ("399067008", "SCT", "lateral"), ("272479007", "SCT", "frontal"), ("399348003", "SCT", "frontal"),
    ("R-10214", "SNM3", "frontal"), ("399135007", "SCT", "oblique")])
def test_view_code_sequence_cid_4010(shared_data, value, scheme, view):
    ds = header(shared_data)
    ds.ViewCodeSequence = Sequence([code(value, scheme, "not read when the code is known")])
    d = decide_view(ds)
    assert d.view == view and d.analyse == (view == "frontal") and "View Code Sequence" in d.reason


def test_an_unknown_code_is_read_by_its_meaning_and_a_modifier_makes_it_non_standard(shared_data):
    ds = header(shared_data)
    ds.ViewCodeSequence = Sequence([code("X1", "99LOCAL", "Lateral")])
    assert decide_view(ds).view == "lateral"
    item = code("399348003", "SCT", "antero-posterior")
    item.ViewModifierCodeSequence = Sequence([code("399196006", "SCT", "cephalad")])
    ds.ViewCodeSequence = Sequence([item])
    d = decide_view(ds)
    assert not d.analyse and d.view == "modified" and "View Modifier cephalad" in d.reason


@pytest.mark.parametrize("keyword", ["SeriesDescription", "ProtocolName", "ImageComments"])
def test_descriptions_decide_when_no_coded_view_exists(shared_data, keyword):
    d = decide_view(header(shared_data, **{keyword: "Thorax LAT"}))
    assert not d.analyse and d.view == "lateral" and keyword in d.reason
    d = decide_view(header(shared_data, **{keyword: "Thorax p.a."}))
    assert d.analyse and d.view == "frontal"


def test_a_description_of_the_whole_exam_states_nothing(shared_data):
    d = decide_view(header(shared_data, ProtocolName="CHEST PA AND LATERAL", StudyDescription="CHEST LAT"))
    assert d.analyse and d.view == "unknown" and "assumed frontal" in d.reason


def test_sources_that_disagree_are_not_analysed(shared_data):
    d = decide_view(header(shared_data, SIIM, SeriesDescription="LAT"))  # ViewPosition PA
    assert not d.analyse and d.view == "conflicting"
    assert "ViewPosition PA" in d.reason and "SeriesDescription" in d.reason


def test_unknown_view_follows_the_setting(shared_data):
    ds = header(shared_data)
    assert decide_view(ds, "analyse").analyse
    d = decide_view(ds, "skip")
    assert not d.analyse and d.view == "unknown" and "unknown_view" in d.reason
    assert decide_view(header(shared_data, ViewPosition="XYZ")).view == "unknown"  # unrecognised: says nothing


def test_reasons_never_copy_an_attribute_value(shared_data):
    secret = "DOE JOHN 1234567"
    ds = header(shared_data, SeriesDescription=f"{secret} LATERAL", ViewPosition=f"{secret[:10]} LL"[:16])
    ds.ViewCodeSequence = Sequence([code("X", "99LOCAL", f"{secret} lateral")])
    d = decide_view(ds)
    assert d.view == "lateral" and "DOE" not in d.reason and "1234567" not in d.reason


def test_a_malformed_sequence_is_no_crash(shared_data):
    ds = header(shared_data)
    ds.ViewCodeSequence = Sequence([Dataset()])
    assert decide_view(ds).view == "unknown"


def test_chest_rule_names_the_non_human_patient_before_the_size(shared_data):
    rule = chest_rule_from(["chest", "THORAX"], 256)
    canine = pydicom.dcmread(shared_data / "dicom/nonchest/highdicom_dx_image_canine_thorax.dcm", force=True)
    assert min(canine.Rows, canine.Columns) < 256
    verdict = is_chest_radiograph(canine, rule)
    assert not verdict.chest and verdict.reason == ("AcquisitionDeviceProcessingDescription names a non-human "
                                                    "patient or a phantom")
    dental = pydicom.dcmread(shared_data / "dicom/nonchest/fo-dicom_CR-ModalitySequenceLUT_dental.dcm", force=True)
    assert is_chest_radiograph(dental, rule).reason.endswith("names another body part")
    nih = pydicom.dcmread(shared_data / NIH, force=True)
    assert is_chest_radiograph(nih, rule).chest
    nih.BodyPartExamined = "chest"
    assert is_chest_radiograph(nih, chest_rule_from(["CHEST"], 2048)).reason == "image smaller than 2048 pixels"
