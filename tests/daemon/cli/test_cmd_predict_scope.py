"""`cxrd predict` applies ingest's chest and view rules: out of scope is one line and exit 1, `--force`
classifies anyway and says so. Real files from the shared data, changed as equipment would write them."""
from __future__ import annotations

import json

import pydicom
import pytest
import torch

from cxrmodel.network import build_model
from cxrmodel.registry import Registry

torch.set_num_threads(2)
NIH_DICOM = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"
NIH_PNG = "nih/images/00000001_000.png"
CANINE = "dicom/nonchest/highdicom_dx_image_canine_thorax.dcm"


@pytest.fixture()
def cxrd(cli_state, cli_captured):
    """`cxrd ARGS` in-process, state in tmp_path, one seeded model current; (exit code, stdout, stderr)."""
    Registry(cli_state / "models").add(build_model(seed=0), version="seed0", promote=True)
    return cli_captured


def lateral(shared_data, tmp_path, **attrs) -> str:  # noqa: ANN003
    ds = pydicom.dcmread(shared_data / NIH_DICOM)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    path = tmp_path / "changed.dcm"
    ds.save_as(path)
    return str(path)


def test_a_lateral_view_is_refused_in_one_line_naming_the_rule(cxrd, shared_data, tmp_path):
    f = lateral(shared_data, tmp_path, ViewPosition="LL")
    code, out, err = cxrd("predict", f)
    assert code == 1 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert f in err and "out of scope: lateral view (ViewPosition LL)" in err and "--force" in err


def test_a_canine_thorax_is_refused_as_non_human(cxrd, shared_data):
    code, out, err = cxrd("predict", str(shared_data / CANINE), str(shared_data / NIH_PNG))
    assert code == 1 and out == "" and err.count("\n") == 1
    reason = err.split("out of scope: ", 1)[1]
    assert "CANINE" not in reason.upper() and "names a non-human patient" in reason  # the rule, not the value


def test_every_out_of_scope_file_is_named_and_nothing_is_classified(cxrd, shared_data, tmp_path):
    f = lateral(shared_data, tmp_path, SeriesDescription="LAT")
    code, out, err = cxrd("predict", str(shared_data / CANINE), f, str(shared_data / NIH_PNG))
    assert code == 1 and out == "" and err.count("\n") == 2
    assert "highdicom_dx_image_canine_thorax.dcm" in err and "lateral view (SeriesDescription)" in err


def test_force_classifies_and_marks_the_result_forced(cxrd, shared_data, tmp_path):
    f = lateral(shared_data, tmp_path, ViewPosition="RL")
    code, out, err = cxrd("predict", "--force", f, str(shared_data / NIH_DICOM), str(shared_data / NIH_PNG),
                          "--format", "json")
    assert code == 0, err
    forced, plain, png = json.loads(out)
    assert forced["forced"] is True and forced["scope"].startswith("lateral view (ViewPosition RL)")
    assert plain["forced"] is False and "assumed frontal" in plain["scope"]
    assert png["forced"] is False and "rules not applied" in png["scope"]
    assert len(forced["probabilities"]) == 14
    code, out, err = cxrd("predict", "--force", f)
    assert code == 0 and "FORCED (--force): out of scope: lateral view (ViewPosition RL)" in out


def test_a_frontal_dicom_says_why_it_is_in_scope(cxrd, shared_data):
    f = shared_data / "dicom/chest/siim-acr_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    code, out, err = cxrd("predict", str(f))
    assert code == 0, err
    assert "scope: frontal view (ViewPosition PA" in out and "FORCED" not in out


def test_unknown_view_skip_applies_to_predict_too(cxrd, shared_data, monkeypatch):
    monkeypatch.setenv("CXRD_DICOM__UNKNOWN_VIEW", "skip")
    code, out, err = cxrd("predict", str(shared_data / NIH_DICOM))
    assert code == 1 and "view not recorded" in err and "unknown_view = skip" in err


def test_a_png_thumbnail_is_out_of_scope(cxrd, tmp_path):
    from PIL import Image
    small = tmp_path / "thumb.png"
    Image.new("L", (128, 128)).save(small)
    code, out, err = cxrd("predict", str(small))
    assert code == 1 and "image smaller than 256 pixels" in err
