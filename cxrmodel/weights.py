"""Import DenseNet121 weights from local files: torchvision (ImageNet), CheXNet-style, TorchXRayVision.

Nothing here downloads: a hospital gateway has no route to the internet, and a model whose bytes
were not checked by a person must not appear at run time. Files are read with
`torch.load(weights_only=True)` (no arbitrary pickled code); a file that is a whole pickled module
is refused unless the caller explicitly trusts it.

Each importer returns an `Imported` (module + the manifest pieces it implies: architecture,
preprocessing, thresholds, source) ready for `Registry.add`.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError
from .labels import LABELS, output_index
from .network import ArchSpec, ChestNet, build
from .preprocess import TORCHVISION_SPEC, XRV_SPEC, PreprocessSpec

FORMATS = ("torchvision", "chexnet", "torchxrayvision")

# CheXNet (arnoweng/CheXNet, jrzech/reproduce-chexnet) emits the ChestX-ray14 order we use.
CHEXNET_LABELS: tuple[str, ...] = LABELS
# TorchXRayVision `datasets.default_pathologies` (18 outputs of the "all" weights); for the
# "nih" weights the last four are empty strings. Copied here so importing needs no torchxrayvision.
XRV_PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
    "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia",
    "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)
TORCHVISION_FILE = "densenet121-a639ec97.pth"

# torchvision's own rule (torchvision.models.densenet._load_state_dict): checkpoints saved before
# PyTorch 0.4 name DenseLayer parts 'norm.1', 'conv.2'; today they are 'norm1', 'conv2'.
_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


@dataclass
class Imported:
    """A loaded module and what its manifest must say about it."""
    module: ChestNet
    arch: ArchSpec
    preprocess: PreprocessSpec
    thresholds: dict[str, float] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapping {'state_dict': ...}/{'model': ...} and pickled modules."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path.name}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled modules with UnpicklingError
        if not allow_pickle:
            raise ModelError(f"{path.name}: not a plain state dict ({type(exc).__name__}); if it is a pickled "
                             "model you trust, import it with allow_pickle/--allow-pickle") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise ModelError(f"{path.name}: cannot load ({type(exc2).__name__})") from None
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path.name}: no tensors found (expected a state dict)")
    return dict(obj)


def rename_old_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """'...denselayer1.norm.1.weight' -> '...denselayer1.norm1.weight' (pre-0.4 checkpoints)."""
    out = {}
    for key, value in state.items():
        m = _OLD_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def _head_index(state: Mapping[str, torch.Tensor], labels: Sequence[str], path: Path, *, names: str,
                missing: str) -> list[int]:
    """Check a checkpoint's head against the output names it comes with; where each of our labels sits."""
    head = state.get("classifier.weight")
    if head is None:
        raise ModelError(f"{path.name}: {missing}")
    if head.shape[0] != len(labels):
        raise ModelError(f"{path.name}: head has {head.shape[0]} outputs but {len(labels)} {names} were given")
    try:
        return output_index(labels)
    except ValueError as exc:
        raise ModelError(f"{path.name}: {exc}") from None


def _load_into(module: ChestNet, state: Mapping[str, torch.Tensor], name: str, *, skip_head: bool = False) -> None:
    own = module.state_dict()
    wanted = {k for k in own if not (skip_head and k.startswith("classifier."))}
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = f"missing {len(missing)} (e.g. {missing[0]})" if missing else f"unexpected {unexpected[0]}"
        raise ModelError(f"{name}: not a DenseNet121 checkpoint of this layout ({detail})")
    for k in wanted:
        if own[k].shape != state[k].shape:
            raise ModelError(f"{name}: shape of {k} is {tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
    module.load_state_dict({k: state[k] for k in wanted}, strict=False)


def _source(path: Path, fmt: str, **extra: Any) -> dict[str, Any]:
    return {"format": fmt, "file": path.name, "sha256": sha256_file(path), **extra}


def torchvision_hub_file(torch_home: str | Path | None = None) -> Path:
    """Where torchvision's hub cache keeps the ImageNet DenseNet121 ($TORCH_HOME/hub/checkpoints)."""
    home = Path(torch_home or os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch")
    checkpoints = home / "hub" / "checkpoints"
    exact = checkpoints / TORCHVISION_FILE
    if exact.is_file():
        return exact
    found = sorted(checkpoints.glob("densenet121-*.pth"))
    if not found:
        raise ModelError(f"no densenet121-*.pth in the torch hub cache ({checkpoints}); copy "
                         f"{TORCHVISION_FILE} there or pass the file")
    return found[0]


def import_torchvision(path: str | Path | None = None, *, seed: int = 0, torch_home: str | Path | None = None,
                       activation: str = "sigmoid") -> Imported:
    """ImageNet DenseNet121 (torchvision layout, old or new key names) as a starting point.

    The 1000-class ImageNet head is dropped and a fresh, seeded 14-output head is attached: the
    result predicts nothing useful until trained, which the source record says. A file whose head
    already has 14 outputs (a cxrd/torchvision-layout chest model) keeps its head.
    """
    path = Path(path) if path is not None else torchvision_hub_file(torch_home)
    state = rename_old_keys(read_state_dict(path))
    module = build(ArchSpec(activation=activation), seed=seed)
    head = state.get("classifier.weight")
    keep_head = head is not None and head.shape[0] == len(LABELS)
    if not keep_head:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    _load_into(module, state, path.name, skip_head=not keep_head)
    return Imported(module.eval(), module.arch, TORCHVISION_SPEC,
                    source=_source(path, "torchvision", head="loaded" if keep_head else f"new (seed {seed})"))


def import_chexnet(path: str | Path, *, labels: Sequence[str] = CHEXNET_LABELS,
                   allow_pickle: bool = False) -> Imported:
    """CheXNet-style checkpoint: `module.densenet121.*` keys (DataParallel), old `norm.1` names,
    head `module.densenet121.classifier.0.*` (Linear inside a Sequential with Sigmoid).

    `labels` names the checkpoint's outputs in its order; they are mapped to ours by name.
    """
    path = Path(path)
    raw = read_state_dict(path, allow_pickle=allow_pickle)
    state = {}
    for key, value in raw.items():
        k = key
        for prefix in ("module.", "densenet121.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        k = k.replace("classifier.0.", "classifier.")
        state[k] = value
    state = rename_old_keys(state)
    index = _head_index(state, labels, path, names="label names",
                        missing="no classifier weights (expected module.densenet121.classifier.0.weight)")
    arch = ArchSpec(num_outputs=len(labels), output_index=None if index == list(range(len(LABELS))) and
                    len(labels) == len(LABELS) else tuple(index))
    module = build(arch)
    _load_into(module, state, path.name)
    return Imported(module.eval(), arch, TORCHVISION_SPEC, source=_source(path, "chexnet"))


def import_torchxrayvision(path: str | Path, *, pathologies: Sequence[str] = XRV_PATHOLOGIES,
                           allow_pickle: bool = False) -> Imported:
    """TorchXRayVision DenseNet121 weights (1-channel input in [-1024, 1024], 18 outputs).

    Outputs are mapped to our 14 by name through `pathologies` (the model's `.pathologies` list;
    '' marks an untrained output). If the checkpoint carries `op_threshs` (the operating points
    TorchXRayVision calibrates with), they become the manifest's per-label thresholds on the raw
    sigmoid probability, instead of rescaling the probabilities as `xrv`'s `op_norm` does.
    """
    path = Path(path)
    state = rename_old_keys(read_state_dict(path, allow_pickle=allow_pickle))
    op_threshs = state.pop("op_threshs", None)
    index = _head_index(state, pathologies, path, names="pathologies",
                        missing="no classifier.weight (not a TorchXRayVision DenseNet state dict)")
    arch = ArchSpec(in_channels=1, num_outputs=len(pathologies), output_index=tuple(index))
    module = build(arch)
    _load_into(module, state, path.name)
    thresholds: dict[str, float] = {}
    if op_threshs is not None and op_threshs.numel() == len(pathologies):
        for label, i in zip(LABELS, index):
            t = float(op_threshs[i])
            if t == t:  # not NaN
                thresholds[label] = t
    return Imported(module.eval(), arch, XRV_SPEC, thresholds,
                    source=_source(path, "torchxrayvision", pathologies=list(pathologies)))


def import_file(path: str | Path, fmt: str, **kwargs: Any) -> Imported:
    """Dispatch on a format name (the CLI's `--format`)."""
    importers = {"torchvision": import_torchvision, "chexnet": import_chexnet,
                 "torchxrayvision": import_torchxrayvision}
    if fmt not in importers:
        raise ModelError(f"unknown weights format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return importers[fmt](path, **kwargs)
