"""Feature cache: DenseNet121 pooled features computed once per image and augmentation view.

Why: with a frozen backbone every epoch would push the same images through the same 8 GFLOP
backbone again. Computing K augmented views once and training the head on them makes ten epochs
cost one backbone pass (see `benchmarks/retrain.py`).

A cache entry is keyed by image content hash + backbone weights hash + preprocessing spec + view
index, so a changed image, backbone or spec can never be served stale features. Features are
derived from patient images, so entries are sealed by a caller-supplied `seal(aad, data)` /
`unseal(aad, blob)` pair (the daemon passes its vault's); cxrmodel itself knows no keys.

Entries are also indexed by the image they came from (the file name stem: for images cxrd exported,
the pseudonymous SOP Instance UID), so that `purge_sources` removes an image's features when the
image itself is purged. A cache written before the index existed has no `INDEXED` marker; the first
purge that finds one clears it whole, since its entries cannot be told apart.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ImageError, ModelError
from .preprocess import PreprocessSpec, load_image, to_tensor

Seal = Callable[[bytes, bytes], bytes]
Unseal = Callable[[bytes, bytes], bytes]
FEATURE_DIM = 1024
MAX_ROTATION = 10.0


class CacheError(ModelError):
    """A cache entry could not be opened (wrong key, tampered file)."""


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def backbone_digest(model: torch.nn.Module) -> str:
    """Hash of the backbone's weights and BatchNorm statistics (not the head): the cache key part
    that makes features from another backbone impossible to reuse."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith("features."):
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def pooled_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DenseNet121's 1024-d global-average-pooled features (what its classifier sees)."""
    f = F.relu(model.features(x))
    return F.adaptive_avg_pool2d(f, 1).flatten(1)


def augment(unit: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The seed method's augmentation: random rotation within +-10 degrees and horizontal flip."""
    import torchvision.transforms.v2.functional as TF

    angle = (torch.rand((), generator=generator).item() * 2 - 1) * MAX_ROTATION
    out = TF.rotate(unit, angle, interpolation=TF.InterpolationMode.BILINEAR)
    if torch.rand((), generator=generator).item() < 0.5:
        out = torch.flip(out, dims=[-1])
    return out


def spec_json(spec: PreprocessSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"))


def load_unit(path: Path, spec: PreprocessSpec) -> torch.Tensor:
    """The image squared and resized per `spec`, still in [0, 1] (1, size, size): augmentation
    runs here, before normalisation, so rotated-in corners are black, not 'zero after mean shift'."""
    flat = PreprocessSpec(size=spec.size, channels=1, value_range=(0.0, 1.0), mean=(0.0,), std=(1.0,),
                          square=spec.square, interpolation=spec.interpolation)
    try:
        return to_tensor(load_image(path), flat)
    except ImageError as exc:  # name the training image (a de-identified file name) so it can be fixed
        raise ImageError(f"{Path(path).name}: {exc}") from None


def finish(unit: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """[0, 1] (1, H, W) -> the model input per `spec` (value range, channels, mean/std)."""
    lo, hi = spec.value_range
    x = unit * (hi - lo) + lo
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
    return ((x.expand(spec.channels, -1, -1) - mean) / std).contiguous()


def view_generator(image_hash: str, view: int) -> torch.Generator:
    """Deterministic per (image, view): a recomputed view is the same view."""
    g = torch.Generator()
    g.manual_seed(int(image_hash[:15], 16) ^ (view * 0x9E3779B1))
    return g


def load_view(path: Path, spec: PreprocessSpec, view: int, image_hash: str) -> torch.Tensor:
    """View 0 is the plain image (used for validation/test); views >= 1 are augmented."""
    unit = load_unit(path, spec)
    if view > 0:
        unit = augment(unit, view_generator(image_hash, view))
    return finish(unit, spec)


def cache_key(image_hash: str, backbone_hash: str, spec: PreprocessSpec, view: int) -> str:
    material = f"{image_hash}|{backbone_hash}|{spec_json(spec)}|rot{MAX_ROTATION}+hflip|view{view}"
    return hashlib.sha256(material.encode()).hexdigest()


INDEX_MARKER = "INDEXED"


def _index_path(directory: Path, source: str) -> Path:
    """Where the keys of one source image are listed (a hash: names stay short and path-safe)."""
    return Path(directory) / "index" / (hashlib.sha256(source.encode()).hexdigest()[:40] + ".keys")


def _entries(directory: Path) -> Iterable[Path]:
    return Path(directory).glob("??/*.feat")


def purge_sources(directory: Path, sources: Iterable[str]) -> int:
    """Remove every cached entry of these source images (file name stems); returns files removed.

    Entries are plain files of derived data: unlinked, not shredded (their key is the cache key,
    derived from the master key, which purged images share with live ones).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed = 0
    if not (directory / INDEX_MARKER).exists():
        legacy = list(_entries(directory))
        for path in legacy:
            path.unlink(missing_ok=True)
        (directory / INDEX_MARKER).write_text("1\n")
        return len(legacy)
    for source in sources:
        index = _index_path(directory, source)
        try:
            keys = index.read_text().split()
        except FileNotFoundError:
            continue
        for key in set(keys):
            path = directory / key[:2] / f"{key}.feat"
            if path.exists():
                path.unlink()
                removed += 1
        index.unlink(missing_ok=True)
    return removed


class FeatureCache:
    """A directory of sealed feature vectors, one file per key; the key is also the AAD, so a file
    moved to another name fails to open instead of serving the wrong image's features."""

    def __init__(self, directory: Path, seal: Seal, unseal: Unseal):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.directory / INDEX_MARKER).exists() and not any(_entries(self.directory)):
            (self.directory / INDEX_MARKER).write_text("1\n")  # a new cache: every entry will be indexed
        self._seal, self._unseal = seal, unseal
        self._indexed: dict[str, set[str]] = {}
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.feat"

    def _index(self, source: str, key: str) -> None:
        """List `key` under `source` (once), so purging that image finds it."""
        if not source:
            return
        known = self._indexed.get(source)
        path = _index_path(self.directory, source)
        if known is None:
            try:
                known = set(path.read_text().split())
            except FileNotFoundError:
                known = set()
            self._indexed[source] = known
        if key in known:
            return
        path.parent.mkdir(exist_ok=True)
        with open(path, "a", encoding="ascii") as f:
            f.write(key + "\n")
        known.add(key)

    def get(self, key: str, source: str = "") -> np.ndarray | None:
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        try:
            data = self._unseal(key.encode(), blob)
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception:
            raise CacheError(f"feature cache entry {key[:12]} cannot be opened (wrong key or altered)") from None
        self.hits += 1
        self._index(source, key)  # the same pixels may arrive under another name
        return array

    def put(self, key: str, array: np.ndarray, source: str = "") -> None:
        """Store one entry; `source` (the image's file name stem) indexes it for `purge_sources`."""
        self._index(source, key)  # indexed before it exists: a crash leaves no unindexed entry
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(self._seal(key.encode(), buf.getvalue()))
        os.replace(tmp, path)


def aesgcm_pair(key: bytes) -> tuple[Seal, Unseal]:
    """An AES-256-GCM seal/unseal pair from a 32-byte key, for callers without a vault."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(key) != 32:
        raise ModelError("feature cache key must be 32 bytes")
    aead = AESGCM(key)

    def seal(aad: bytes, data: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + aead.encrypt(nonce, data, aad)

    def unseal(aad: bytes, blob: bytes) -> bytes:
        return aead.decrypt(blob[:12], blob[12:], aad)

    return seal, unseal


def _progress(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[features] {msg}", file=sys.stderr, flush=True)


@torch.no_grad()
def compute_features(
    model: torch.nn.Module,
    paths: Sequence[Path],
    spec: PreprocessSpec,
    views: Iterable[int],
    cache: FeatureCache | None = None,
    batch_size: int = 32,
    quiet: bool = True,
) -> np.ndarray:
    """(N, V, 1024) features for each path and view, reading from / filling the cache.

    The backbone runs in eval mode, so its BatchNorm statistics are used, never updated.
    """
    views = list(views)
    was_training = model.training
    model.eval()
    backbone = backbone_digest(model)
    hashes = [file_digest(p) for p in paths]
    out = np.zeros((len(paths), len(views), FEATURE_DIM), dtype=np.float32)
    todo: list[tuple[int, int, str]] = []
    for i, h in enumerate(hashes):
        for j, v in enumerate(views):
            key = cache_key(h, backbone, spec, v)
            got = cache.get(key, Path(paths[i]).stem) if cache is not None else None
            if got is None:
                todo.append((i, j, key))
            else:
                out[i, j] = got
    _progress(f"features: {len(todo)} to compute, {len(paths) * len(views) - len(todo)} cached", quiet)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        x = torch.stack([load_view(paths[i], spec, views[j], hashes[i]) for i, j, _ in chunk])
        feats = pooled_features(model, x).numpy()
        for (i, j, key), f in zip(chunk, feats):
            out[i, j] = f
            if cache is not None:
                cache.put(key, f, Path(paths[i]).stem)
        _progress(f"features: {min(start + batch_size, len(todo))}/{len(todo)}", quiet)
    model.train(was_training)
    return out


@torch.no_grad()
def recalibrate_batchnorm(
    model: torch.nn.Module, paths: Sequence[Path], spec: PreprocessSpec, batch_size: int = 32, quiet: bool = True
) -> None:
    """Set every BatchNorm's running statistics from these images (cumulative average), weights
    untouched. Why: a randomly initialised DenseNet121 in eval mode uses mean 0 / var 1, so its
    activations are badly scaled after 120 layers; data-derived statistics give usable features
    when no pretrained weights exist. Used once when a backbone is created, never while frozen."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        x = torch.stack([finish(load_unit(p, spec), spec) for p in batch])
        model.features(x)
        _progress(f"batchnorm statistics: {start + len(batch)}/{len(paths)}", quiet)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()
