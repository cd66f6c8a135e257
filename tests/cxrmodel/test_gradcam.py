"""Grad-CAM heatmaps: shape, range, and that they follow what the model actually responds to."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cxrmodel import preprocess as P
from cxrmodel.errors import ModelError
from cxrmodel.gradcam import gradcam, overlay
from cxrmodel.labels import LABELS
from cxrmodel.network import build_model

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def model():
    return build_model(seed=0).eval()


def test_heatmap_shape_range_and_determinism(model, shared_data):
    x = P.preprocess(shared_data / "nih/images/00000001_000.png")
    cam = gradcam(model, x, "Cardiomegaly")
    assert cam.shape == (224, 224) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(cam, gradcam(model, x, LABELS.index("Cardiomegaly")))
    assert not model.training


def test_heatmap_points_at_the_region_that_drives_the_score(model):
    """Make 'Mass' depend only on one feature channel, light that channel's input region, expect the peak there."""
    m = copy.deepcopy(model)
    x = torch.zeros(3, 224, 224)
    x[:, 150:200, 20:70] = 2.0  # a bright patch in the lower left
    with torch.no_grad():
        feats = m.features(x[None])[0]  # (1024, 7, 7)
        # choose the channel most specific to the patch (high inside, low elsewhere)
        inside = feats[:, 5:7, 0:3].mean((1, 2))
        outside = feats.mean((1, 2))
        channel = int(torch.argmax(inside - outside))
        m.classifier.weight.zero_()
        m.classifier.weight[LABELS.index("Mass"), channel] = 1.0
    cam = gradcam(m, x, "Mass")
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    assert 120 <= row <= 224 and 0 <= col <= 100


def test_bad_label_is_a_model_error(model):
    with pytest.raises(ModelError, match="Fracture"):
        gradcam(model, torch.zeros(3, 224, 224), "Fracture")
    with pytest.raises(ModelError):
        gradcam(model, torch.zeros(3, 224, 224), 14)


def test_overlay_is_rgb_of_the_image_size():
    img = np.linspace(0, 1, 300 * 200, dtype=np.float32).reshape(300, 200)
    heat = np.zeros((7, 7), np.float32)
    heat[3, 3] = 1.0
    rgb = overlay(img, heat)
    assert rgb.shape == (300, 200, 3) and rgb.dtype == np.uint8
    centre, corner = rgb[150, 100], rgb[0, 0]
    assert centre[0] > centre[2]  # tinted red/yellow where the map is high
    assert corner[0] == corner[1] == corner[2]  # untouched grey where it is zero
