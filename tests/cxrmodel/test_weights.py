"""Importing weights from the three local formats, with files made here (no pretrained weights exist offline)."""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from cxrmodel import preprocess as P
from cxrmodel import weights as W
from cxrmodel.errors import ModelError
from cxrmodel.labels import LABELS

torch.set_num_threads(2)
NEW_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(weight|bias|running_mean|running_var)$")
IMAGES = ["00000001_000.png", "00000003_000.png"]


def to_old_layout(state: dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """'denselayer1.norm1.weight' -> 'denselayer1.norm.1.weight', as in pre-0.4 checkpoints."""
    out = OrderedDict()
    for k, v in state.items():
        m = NEW_KEY.match(k)
        out[f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else k] = v
    return out


def randomize_bn(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics, so a loader that drops or mixes them is caught."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module


@pytest.fixture(scope="module")
def images(shared_data: Path) -> list[Path]:
    return [shared_data / "nih" / "images" / n for n in IMAGES]


def test_torchvision_imagenet_file_in_old_layout_and_hub_cache(tmp_path, images):
    torch.manual_seed(1)
    ref = randomize_bn(torchvision.models.densenet121(weights=None), 1).eval()
    old = to_old_layout(ref.state_dict())
    assert any(".norm.1." in k for k in old)  # really the old layout
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(old, hub / W.TORCHVISION_FILE)

    imported = W.import_torchvision(torch_home=tmp_path, seed=3)
    assert imported.source["format"] == "torchvision" and imported.source["head"] == "new (seed 3)"
    x = torch.stack([P.preprocess(p, imported.preprocess) for p in images])
    with torch.inference_mode():
        expected = torch.flatten(nn.functional.adaptive_avg_pool2d(nn.functional.relu(ref.features(x)), 1), 1)
        pooled = imported.module.embed(x)
        np.testing.assert_allclose(pooled.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
        assert imported.module.head(pooled).shape == (len(images), 14)
    # the new head is reproducible from its seed
    again = W.import_torchvision(hub / W.TORCHVISION_FILE, seed=3)
    assert torch.equal(again.module.classifier.weight, imported.module.classifier.weight)


def test_torchvision_loader_names_the_problem(tmp_path):
    torch.save({"features.conv0.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(ModelError, match="missing"):
        W.import_torchvision(tmp_path / "partial.pth")
    with pytest.raises(ModelError, match="no densenet121"):
        W.import_torchvision(torch_home=tmp_path / "empty")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pth"):
        W.import_torchvision(tmp_path / "junk.pth")


class CheXNetReference(nn.Module):
    """arnoweng/CheXNet's model class: torchvision DenseNet121 with Linear+Sigmoid head."""

    def __init__(self, n: int = 14):
        super().__init__()
        self.densenet121 = torchvision.models.densenet121(weights=None)
        features = self.densenet121.classifier.in_features
        self.densenet121.classifier = nn.Sequential(nn.Linear(features, n), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.densenet121(x)


def test_chexnet_checkpoint_matches_its_reference_forward(tmp_path, images):
    torch.manual_seed(2)
    ref = randomize_bn(CheXNetReference(), 2).eval()
    state = to_old_layout(nn.DataParallel(ref).state_dict())
    assert "module.densenet121.classifier.0.weight" in state and any(".norm.1." in k for k in state)
    torch.save({"epoch": 7, "state_dict": state, "best_loss": 0.1}, tmp_path / "m-chexnet.pth.tar")

    imported = W.import_chexnet(tmp_path / "m-chexnet.pth.tar")
    x = torch.stack([P.preprocess(p, imported.preprocess) for p in images])
    with torch.inference_mode():
        expected = ref(x)
        ours = torch.sigmoid(imported.module(x))
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), atol=1e-5)


def test_chexnet_outputs_are_mapped_by_name_not_position(tmp_path, images):
    torch.manual_seed(4)
    ref = randomize_bn(CheXNetReference(), 4).eval()
    torch.save(nn.DataParallel(ref).state_dict(), tmp_path / "shuffled.pth")
    order = list(reversed(LABELS))  # the checkpoint's outputs in reverse order
    imported = W.import_chexnet(tmp_path / "shuffled.pth", labels=order)
    x = P.preprocess(images[0], imported.preprocess)[None]
    with torch.inference_mode():
        raw = ref(x)[0]
        ours = torch.sigmoid(imported.module(x))[0]
    for i, label in enumerate(LABELS):
        assert abs(float(ours[i]) - float(raw[order.index(label)])) < 1e-5
    with pytest.raises(ModelError, match="Hernia"):
        W.import_chexnet(tmp_path / "shuffled.pth", labels=[*LABELS[:13], "Fracture"])


# ------------------------------------------------------------------------- TorchXRayVision

@pytest.fixture(scope="module")
def xrv_reference():
    xrv = pytest.importorskip("torchxrayvision")
    torch.manual_seed(5)
    op = torch.tensor([0.3 + 0.02 * i for i in range(14)] + [float("nan")] * 4)
    model = randomize_bn(xrv.models.DenseNet(weights=None, op_threshs=op), 5).eval()
    return xrv, model


def xrv_reference_input(xrv, path: Path) -> torch.Tensor:
    """TorchXRayVision's documented preprocessing: normalize to [-1024, 1024], centre crop, resize."""
    img = np.asarray(Image.open(path)).astype(np.float32)
    img = xrv.datasets.normalize(img, 255)[None]
    transform = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])
    return torch.from_numpy(transform(img))


def test_torchxrayvision_parity_with_the_reference(tmp_path, images, xrv_reference):
    """Our pipeline (import + preprocess + forward + name mapping) equals xrv's on real radiographs.

    The films are first brought to non-square 260x224 (PIL, once, written as PNG) so the centre
    crop is exercised and the final size is already 224: the two libraries' resize filters differ
    (skimage's Gaussian anti-aliasing vs torch's triangle filter; see the next test), and that is
    the one step where exact parity is not the contract.
    """
    xrv, ref = xrv_reference
    torch.save(ref.state_dict(), tmp_path / "xrv.pt")
    imported = W.import_torchxrayvision(tmp_path / "xrv.pt", pathologies=ref.targets)
    assert imported.preprocess == P.XRV_SPEC
    prepared = []
    for i, p in enumerate(images):
        out = tmp_path / f"film{i}.png"
        Image.open(p).resize((260, 224), Image.BILINEAR).save(out)
        prepared.append(out)
    ref_x = torch.stack([xrv_reference_input(xrv, p) for p in prepared])
    our_x = torch.stack([P.preprocess(p, imported.preprocess) for p in prepared])
    np.testing.assert_allclose(our_x.numpy(), ref_x.numpy(), atol=1e-3)

    ref_plain = xrv.models.DenseNet(weights=None, apply_sigmoid=True)
    ref_plain.load_state_dict({k: v for k, v in ref.state_dict().items() if k != "op_threshs"})
    ref_plain.eval()
    with torch.inference_mode():
        expected = ref_plain(ref_x)                      # (N, 18) in xrv order
        ours = torch.sigmoid(imported.module(our_x))     # (N, 14) in our order
        calibrated = ref(ref_x)                          # xrv's op_norm output: 0.5 = threshold
    for i, label in enumerate(LABELS):
        j = list(ref.targets).index(label)
        np.testing.assert_allclose(ours[:, i].numpy(), expected[:, j].numpy(), atol=1e-4)
        # op_threshs became our per-label thresholds: same positive/negative decisions as xrv.
        t = imported.thresholds[label]
        assert t == pytest.approx(float(ref.op_threshs[j]))
        assert ((ours[:, i] >= t) == (calibrated[:, j] >= 0.5)).all()


def test_torchxrayvision_full_resolution_pipeline_is_close(tmp_path, images, xrv_reference):
    """From the 256x256 NIH PNGs (resize included) the two pipelines differ only by resize filter."""
    xrv, ref = xrv_reference
    torch.save(ref.state_dict(), tmp_path / "xrv.pt")
    imported = W.import_torchxrayvision(tmp_path / "xrv.pt")
    ref_plain = xrv.models.DenseNet(weights=None, apply_sigmoid=True)
    ref_plain.load_state_dict({k: v for k, v in ref.state_dict().items() if k != "op_threshs"})
    ref_plain.eval()
    with torch.inference_mode():
        expected = ref_plain(torch.stack([xrv_reference_input(xrv, p) for p in images]))
        ours = torch.sigmoid(imported.module(torch.stack([P.preprocess(p, imported.preprocess) for p in images])))
    idx = [list(ref.targets).index(label) for label in LABELS]
    assert float((ours - expected[:, idx]).abs().max()) < 1e-2


def test_torchxrayvision_nih_weights_with_blank_outputs(tmp_path, xrv_reference):
    xrv, ref = xrv_reference
    torch.save(ref.state_dict(), tmp_path / "nih.pt")
    nih = [*ref.targets[:14], "", "", "", ""]
    imported = W.import_torchxrayvision(tmp_path / "nih.pt", pathologies=nih)
    assert imported.arch.output_index == tuple(nih.index(label) for label in LABELS)
    with pytest.raises(ModelError, match="outputs"):
        W.import_torchxrayvision(tmp_path / "nih.pt", pathologies=LABELS)


def test_pickled_module_needs_explicit_trust(tmp_path):
    model = CheXNetReference()
    torch.save(model, tmp_path / "whole.pth")
    with pytest.raises(ModelError, match="allow-pickle"):
        W.import_chexnet(tmp_path / "whole.pth")
    state = W.read_state_dict(tmp_path / "whole.pth", allow_pickle=True)
    assert "densenet121.classifier.0.weight" in state
