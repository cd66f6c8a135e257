"""The heatmap as a Segmentation a viewer overlays on the radiograph: built from real films, on their
own pixel grid, pointing back at them, and passing (or failing) cxrd's pre-send object check; plus
the `results.heatmap_objects` setting."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid

from config import ConfigError, load_settings
from conftest import SHARED_DATA
from daemon.dicom import finding_codes as codes
from daemon.dicom import result_objects as report
from daemon.dicom.heatmap_map import SEGMENTATION, attention_on_grid, build_heatmap_map
from daemon.dicom.object_checks import ObjectCheckError, check_object

torch.set_num_threads(2)

IDENTITY = report.StudyIdentity(study_uid=generate_uid(), patient_id="PID-77", patient_name="DOE^JANE",
                                issuer_of_patient_id="HOSP-A", accession_number="ACC-5", study_date="20240131")
CR_FILM = SHARED_DATA / "dicom" / "chest" / "wg04_RG1_J2KI.dcm"  # 1955 x 1841, not square, lossy J2K


@pytest.fixture(scope="module")
def model():  # noqa: ANN201
    from cxrmodel.network import build_model
    return build_model(seed=0).eval()


def _source(header: pydicom.Dataset) -> report.SourceImage:
    return report.SourceImage(str(header.SOPClassUID), str(header.SOPInstanceUID), str(header.SeriesInstanceUID))


def _map(header: pydicom.Dataset, attention: np.ndarray, label: str = "Effusion") -> pydicom.Dataset:
    return build_heatmap_map(IDENTITY, _source(header), header, attention, label=label, probability=0.61,
                             model_version="v7", series_uid=generate_uid(), sop_uid=generate_uid(),
                             patient_orientation="\\".join(header.get("PatientOrientation", [])))


@pytest.mark.slow
def test_map_of_a_real_film_lies_on_its_pixel_grid_and_points_back_at_it(model):  # noqa: ANN001
    from cxrmodel.gradcam import gradcam
    from cxrmodel.preprocess import preprocess

    header = pydicom.dcmread(CR_FILM, stop_before_pixels=True)
    cam = gradcam(model, preprocess(CR_FILM), "Effusion")
    attention = attention_on_grid(cam, header.Rows, header.Columns, "crop")
    data = report.to_bytes(_map(header, attention))
    back = check_object(data)  # the pre-send check accepts it

    assert back.SOPClassUID == SEGMENTATION and back.Modality == "SEG"
    assert (back.Rows, back.Columns) == (header.Rows, header.Columns)  # registered by grid, pixel for pixel
    assert back.SegmentationType == "FRACTIONAL" and back.MaximumFractionalValue == 255
    assert "FrameOfReferenceUID" not in back  # a radiograph has none; nothing is invented
    assert back.StudyInstanceUID == IDENTITY.study_uid and back.PatientID == "PID-77"
    frame_src = back.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert frame_src.ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert frame_src.SpatialLocationsPreserved == "YES"
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == header.SeriesInstanceUID
    segment = back.SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.finding_code("Effusion").value
    assert "not a per-pixel probability" in segment.SegmentDescription
    assert "physician review" in back.ImageComments
    assert list(back.PatientOrientation) == list(header.PatientOrientation)
    assert back.LossyImageCompression == "01"  # computed from a lossy film, and says so
    pixels = back.pixel_array
    expected = np.round(attention * 255)
    assert np.abs(pixels.astype(int) - expected).max() <= 1
    assert pixels.max() > 200  # Grad-CAM is scaled to 1 at its peak


def test_attention_goes_back_where_the_model_looked_for_each_squaring():
    """A hot spot in the model's input lands on the matching film pixel: crop maps to the centre
    square (sides 0, the model never saw them), pad cuts the padding off, stretch scales each axis."""
    cam = np.zeros((8, 8), dtype=np.float32)
    cam[0, 7] = 1.0  # top-right corner of what the model saw
    crop = attention_on_grid(cam, 100, 200, "crop")  # the model saw columns 50..149
    assert crop.shape == (100, 200) and crop[:, :50].max() == 0 and crop[:, 150:].max() == 0
    assert np.unravel_index(crop.argmax(), crop.shape)[1] in range(135, 150)
    pad = attention_on_grid(cam, 100, 200, "pad")  # the model saw a 200x200 square, film at rows 50..149
    assert pad.shape == (100, 200) and pad.max() == 0  # the corner was padding, not film
    stretch = attention_on_grid(cam, 100, 200, "stretch")
    r, c = np.unravel_index(stretch.argmax(), stretch.shape)
    assert r < 10 and c > 185


@pytest.mark.slow
def test_the_sc_overlay_uses_the_same_registration(model):  # noqa: ANN001
    """With a centre-cropping model the SC's overlay leaves the sides the model never saw uncoloured."""
    from cxrmodel.preprocess import load_image, preprocess

    image = load_image(CR_FILM)
    attention = attention_on_grid(np.ones((224, 224), dtype=np.float32), *image.shape, "crop")
    picture = report.heatmap_picture(model, preprocess(CR_FILM), image, "Effusion", attention=attention)
    small = report.fit_for_overlay(image)
    gray = (np.clip(small, 0, 1) * 255).round()
    assert small.shape[0] > small.shape[1]  # a tall film: the crop cut its top and bottom
    for rows in (slice(0, 20), slice(-20, None)):
        assert np.abs(picture[rows].astype(int) - gray[rows, :, None]).max() <= 1  # film only, no overlay
    assert (picture[small.shape[0] // 2, small.shape[1] // 2, 0] > gray[small.shape[0] // 2, small.shape[1] // 2])


def _tampered(change) -> bytes:  # noqa: ANN001
    header = pydicom.dcmread(CR_FILM, stop_before_pixels=True)
    ds = _map(header, np.full((header.Rows, header.Columns), 0.5, dtype=np.float32))
    change(ds)
    return report.to_bytes(ds)


def _other_source(ds: pydicom.Dataset) -> None:
    ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID = generate_uid()


def _short_pixels(ds: pydicom.Dataset) -> None:
    ds.PixelData = ds.PixelData[:-100]


def _binary(ds: pydicom.Dataset) -> None:
    ds.SegmentationType = "BINARY"


def _no_category(ds: pydicom.Dataset) -> None:
    del ds.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence


def _grid_not_kept(ds: pydicom.Dataset) -> None:
    ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0] \
        .SpatialLocationsPreserved = "NO"


@pytest.mark.parametrize("change, needle", [
    (_other_source, "not in the Referenced Series Sequence"),
    (_short_pixels, "Pixel Data holds"),
    (_binary, "not FRACTIONAL"),
    (_no_category, "SegmentedPropertyCategoryCodeSequence is missing"),
    (_grid_not_kept, "pixel grid"),
])
def test_a_broken_map_is_refused_by_the_pre_send_check(change, needle):  # noqa: ANN001
    with pytest.raises(ObjectCheckError, match=needle):
        check_object(_tampered(change))


def test_a_map_off_the_source_grid_is_not_built():
    header = pydicom.dcmread(CR_FILM, stop_before_pixels=True)
    with pytest.raises(report.ReportError, match="pixel grid"):
        _map(header, np.zeros((224, 224), dtype=np.float32))


def test_a_private_finding_code_is_declared_in_the_map():
    header = pydicom.dcmread(CR_FILM, stop_before_pixels=True)
    ds = _map(header, np.zeros((header.Rows, header.Columns), dtype=np.float32), label="Pleural_Thickening")
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == codes.PRIVATE_SCHEME


def test_heatmap_objects_setting_is_checked_at_load(tmp_path):
    assert load_settings(None, env={}).results.heatmap_objects == ["secondary_capture"]
    f = tmp_path / "c.toml"
    f.write_text('[results]\nsend_heatmap = true\nheatmap_objects = ["segmentation", "secondary_capture"]\n')
    assert load_settings(f, env={}).results.heatmap_objects == ["segmentation", "secondary_capture"]
    for text, needle in [('heatmap_objects = ["parametric_map"]', "must be among secondary_capture, segmentation"),
                         ('heatmap_objects = ["segmentation", "segmentation"]', "twice"),
                         ('send_heatmap = true\nheatmap_objects = []', "is empty")]:
        f.write_text(f"[results]\n{text}\n")
        with pytest.raises(ConfigError, match=needle):
            load_settings(f, env={})
