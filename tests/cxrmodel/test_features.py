"""Feature cache: sealed at rest, keyed by image + backbone + preprocessing + view, never stale."""
from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrmodel import features as FC
from cxrmodel.network import build_model
from cxrmodel.preprocess import TORCHVISION_SPEC

SPEC = replace(TORCHVISION_SPEC, size=64)


@pytest.fixture(scope="module")
def images(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "nih" / "images").glob("*.png"))[:4]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.set_num_threads(2)
    return build_model(seed=0).eval()


def _pair() -> tuple[FC.Seal, FC.Unseal]:
    return FC.aesgcm_pair(os.urandom(32))


def test_cache_returns_same_features_and_skips_the_backbone(tmp_path: Path, images: list[Path], model) -> None:
    seal, unseal = _pair()
    cache = FC.FeatureCache(tmp_path, seal, unseal)
    first = FC.compute_features(model, images, SPEC, [0, 1], cache)
    assert first.shape == (4, 2, 1024) and cache.misses == 8 and cache.hits == 0
    again = FC.FeatureCache(tmp_path, seal, unseal)
    second = FC.compute_features(model, images, SPEC, [0, 1], again)
    assert again.hits == 8 and again.misses == 0
    np.testing.assert_array_equal(first, second)
    uncached = FC.compute_features(model, images, SPEC, [0, 1], None)
    np.testing.assert_allclose(first, uncached, rtol=1e-5, atol=1e-6)
    # views differ (augmentation), view 0 is the plain image
    assert not np.allclose(first[:, 0], first[:, 1])


def test_entries_are_encrypted_at_rest(tmp_path: Path, images: list[Path], model) -> None:
    cache = FC.FeatureCache(tmp_path, *_pair())
    feats = FC.compute_features(model, images[:1], SPEC, [0], cache)
    files = list(tmp_path.rglob("*.feat"))
    assert len(files) == 1
    raw = files[0].read_bytes()
    buf = io.BytesIO()
    np.save(buf, feats[0, 0])
    assert buf.getvalue()[-64:] not in raw and b"NUMPY" not in raw


def test_wrong_key_or_swapped_entry_fails_loudly(tmp_path: Path, images: list[Path], model) -> None:
    seal, unseal = _pair()
    cache = FC.FeatureCache(tmp_path, seal, unseal)
    FC.compute_features(model, images[:2], SPEC, [0], cache)
    a, b = sorted(tmp_path.rglob("*.feat"))
    with pytest.raises(FC.CacheError, match="cannot be opened"):
        FC.FeatureCache(tmp_path, *_pair()).get(a.stem)
    b.write_bytes(a.read_bytes())  # another image's features under this key: AAD mismatch
    with pytest.raises(FC.CacheError):
        cache.get(b.stem)


def test_key_changes_with_image_backbone_spec_and_view(images: list[Path], model) -> None:
    h = FC.file_digest(images[0])
    bb = FC.backbone_digest(model)
    base = FC.cache_key(h, bb, SPEC, 0)
    assert base == FC.cache_key(h, bb, SPEC, 0)
    other_model = build_model(seed=1)
    assert FC.backbone_digest(other_model) != bb
    assert len({base, FC.cache_key(FC.file_digest(images[1]), bb, SPEC, 0), FC.cache_key(h, FC.backbone_digest(other_model), SPEC, 0),
                FC.cache_key(h, bb, replace(SPEC, size=96), 0), FC.cache_key(h, bb, SPEC, 1)}) == 5
    # changing only the head does not invalidate the backbone's features
    model2 = build_model(seed=0)
    with torch.no_grad():
        model2.classifier.weight.add_(1.0)
    assert FC.backbone_digest(model2) == bb


def test_augmented_view_is_deterministic_and_bounded(images: list[Path]) -> None:
    h = FC.file_digest(images[0])
    a = FC.load_view(images[0], SPEC, 3, h)
    b = FC.load_view(images[0], SPEC, 3, h)
    c = FC.load_view(images[0], SPEC, 4, h)
    assert a.shape == (3, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)
    unit = FC.load_unit(images[0], SPEC)
    assert 0.0 <= float(unit.min()) and float(unit.max()) <= 1.0


def test_batchnorm_recalibration_sets_statistics_from_images(images: list[Path]) -> None:
    m = build_model(seed=0)
    FC.recalibrate_batchnorm(m, images, SPEC)
    assert not m.training
    assert float(m.features.norm0.running_mean.abs().sum()) > 0  # was all zeros
    assert m.features.norm0.momentum == 0.1  # restored


def test_key_must_be_32_bytes() -> None:
    with pytest.raises(FC.ModelError):
        FC.aesgcm_pair(b"short")


def test_unreadable_training_image_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "00000099_000.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(FC.ImageError, match="00000099_000.png"):
        FC.load_unit(bad, SPEC)


def test_purge_sources_removes_one_images_entries_and_clears_an_unindexed_legacy_cache(tmp_path):
    seal, unseal = FC.aesgcm_pair(os.urandom(32))
    cache = FC.FeatureCache(tmp_path / "c", seal, unseal)
    vec = np.ones(FC.FEATURE_DIM, dtype=np.float32)
    for key, source in (("aa" + "1" * 62, "2.25.1"), ("ab" + "2" * 62, "2.25.1"), ("bb" + "3" * 62, "2.25.2")):
        cache.put(key, vec, source)
    assert FC.purge_sources(tmp_path / "c", ["2.25.1", "2.25.404"]) == 2
    assert cache.get("aa" + "1" * 62) is None and cache.get("bb" + "3" * 62) is not None
    assert FC.purge_sources(tmp_path / "c", ["2.25.1"]) == 0  # idempotent
    # a cache written before entries were indexed (no marker): its entries cannot be told apart
    legacy = tmp_path / "legacy"
    (legacy / "cc").mkdir(parents=True)
    (legacy / "cc" / ("cc" + "4" * 62 + ".feat")).write_bytes(b"sealed")
    FC.FeatureCache(legacy, seal, unseal)  # opening it does not pretend it is indexed
    assert FC.purge_sources(legacy, ["2.25.9"]) == 1
    assert not list(legacy.rglob("*.feat")) and (legacy / FC.INDEX_MARKER).exists()
