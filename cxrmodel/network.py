"""The classifier: DenseNet121 (torchvision's, rebuilt in `densenet`) with a 14-output head (CheXNet, Rajpurkar et al. 2017).

The module returns *logits*; turning them into probabilities is `probabilities()`, chosen by the
manifest's `activation`: independent sigmoids (multi-label, the default: a film can show several
findings) or, only to reproduce the ChestX-ray14 paper's softmax/cross-entropy variant, "softmax".

The state-dict keys are torchvision's own (`features.*`, `classifier.*`), so torchvision,
CheXNet and TorchXRayVision checkpoints load after at most a key rename. Models whose outputs are
more than our 14 (TorchXRayVision has 18) keep their full classifier and pick ours by index
(`output_index`, computed from the names), so their weights load unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelError
from .labels import NUM_LABELS

ACTIVATIONS = ("sigmoid", "softmax")


@dataclass(frozen=True)
class ArchSpec:
    """Enough to rebuild the module before loading its state dict; serialised in the manifest."""
    name: str = "densenet121"
    in_channels: int = 3
    num_outputs: int = NUM_LABELS
    output_index: tuple[int, ...] | None = None  # which raw outputs are our 14 labels, in order
    activation: str = "sigmoid"

    def __post_init__(self) -> None:
        if self.name != "densenet121":
            raise ModelError(f"unknown architecture {self.name!r} (only densenet121)")
        if self.activation not in ACTIVATIONS:
            raise ModelError(f"activation must be one of {ACTIVATIONS}, not {self.activation!r}")
        if self.in_channels not in (1, 3):
            raise ModelError("in_channels must be 1 or 3")
        if self.output_index is not None:
            if len(self.output_index) != NUM_LABELS or not all(0 <= i < self.num_outputs for i in self.output_index):
                raise ModelError("output_index must give one valid output position for each of the 14 labels")
        elif self.num_outputs != NUM_LABELS:
            raise ModelError(f"{self.num_outputs} outputs need an output_index mapping them to the 14 labels")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_index"] = list(self.output_index) if self.output_index is not None else None
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ArchSpec":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelError(f"architecture: unknown keys {sorted(unknown)}")
        kw = dict(data)
        if kw.get("output_index") is not None:
            kw["output_index"] = tuple(int(i) for i in kw["output_index"])
        return cls(**kw)


class ChestNet(nn.Module):
    """DenseNet121 features + linear head; `forward` gives the 14 logits in `labels.LABELS` order."""

    def __init__(self, arch: ArchSpec = ArchSpec()):
        super().__init__()
        from .densenet import DenseNet121  # torchvision's module tree without importing torchvision

        self.arch = arch
        base = DenseNet121(num_classes=arch.num_outputs)
        if arch.in_channels != 3:
            base.features.conv0 = nn.Conv2d(arch.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.features = base.features
        self.classifier = base.classifier
        index = torch.tensor(arch.output_index if arch.output_index is not None else [], dtype=torch.long)
        self.register_buffer("_index", index, persistent=False)
        self._select = arch.output_index is not None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled 1024-d image features (what a frozen-backbone trainer caches)."""
        f = F.relu(self.features(x))
        return torch.flatten(F.adaptive_avg_pool2d(f, 1), 1)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Classifier on pooled features -> the 14 logits."""
        out = self.classifier(pooled)
        return out.index_select(1, self._index) if self._select else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def build_model(num_labels: int = NUM_LABELS, *, in_channels: int = 3, activation: str = "sigmoid",
                seed: int | None = None) -> ChestNet:
    """A fresh (randomly initialised) ChestNet; `seed` makes the initialisation reproducible."""
    if num_labels != NUM_LABELS:
        raise ModelError(f"cxrd models predict the {NUM_LABELS} ChestX-ray14 findings, not {num_labels}")
    return build(ArchSpec(in_channels=in_channels, activation=activation), seed=seed)


def build(arch: ArchSpec, seed: int | None = None) -> ChestNet:
    """Module for an architecture spec (e.g. one read from a manifest)."""
    if seed is None:
        return ChestNet(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ChestNet(arch)


def probabilities(logits: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """Logits -> probabilities: independent sigmoids, or softmax over the 14 (paper reproduction)."""
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    raise ModelError(f"unknown activation {activation!r}")


def loss_function(activation: str = "sigmoid", pos_weight: torch.Tensor | None = None) -> nn.Module:
    """The training loss that matches an activation (BCE-with-logits for sigmoid; CE for softmax)."""
    if activation == "sigmoid":
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    if activation == "softmax":
        return _SoftTargetCrossEntropy()
    raise ModelError(f"unknown activation {activation!r}")


class _SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against multi-hot targets normalised to sum 1 (rows with no finding are skipped)."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mass = targets.sum(1, keepdim=True)
        keep = mass.squeeze(1) > 0
        if not keep.any():
            return logits.sum() * 0.0
        t = targets[keep] / mass[keep]
        return -(t * torch.log_softmax(logits[keep], 1)).sum(1).mean()


def check_labels(names: Sequence[str]) -> None:
    """Raise unless `names` are exactly our 14 labels in our order (for modules handed to the registry)."""
    from .labels import LABELS

    if tuple(names) != LABELS:
        raise ModelError("labels must be the 14 ChestX-ray14 findings in canonical order")
