"""`cxrmodel.densenet` is torchvision's DenseNet-121 without importing torchvision: same keys, same
seeded weights, same outputs (torchvision is imported here only to compare)."""
from __future__ import annotations

import subprocess
import sys

import torch
import torchvision

from cxrmodel.densenet import DenseNet121
from cxrmodel.network import ArchSpec, build


def _seeded(make, seed: int = 7):  # noqa: ANN001, ANN202
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def test_same_state_dict_keys_shapes_and_seeded_weights_as_torchvision() -> None:
    ours = _seeded(lambda: DenseNet121(num_classes=14)).state_dict()
    theirs = _seeded(lambda: torchvision.models.densenet121(weights=None, num_classes=14)).state_dict()
    assert list(ours) == list(theirs)
    for key in theirs:
        assert ours[key].shape == theirs[key].shape, key
        assert torch.equal(ours[key], theirs[key]), key
    assert ours._metadata["features.denseblock1"] == theirs._metadata["features.denseblock1"]


def test_same_outputs_for_torchvision_weights() -> None:
    theirs = torchvision.models.densenet121(weights=None, num_classes=14)
    for m in theirs.modules():  # running statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = DenseNet121(num_classes=14)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        expected = theirs.eval()(x)
        f = torch.nn.functional.relu(ours.eval().features(x))
        got = ours.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(f, 1), 1))
    assert torch.equal(got, expected)


def test_a_one_channel_model_is_unchanged() -> None:
    m = build(ArchSpec(in_channels=1), seed=3)
    assert m.features.conv0.weight.shape == (64, 1, 7, 7)


def test_building_a_model_does_not_import_torchvision() -> None:
    code = ("import sys; from cxrmodel.network import build, ArchSpec; build(ArchSpec(), seed=1); "
            "print('torchvision' in sys.modules, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
