"""Training on tiny real subsets: frozen BatchNorm, resume, cache reuse, finetune, paper mode, compare."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrmodel import evaluate as E
from cxrmodel import features as FC
from cxrmodel import train as T
from cxrmodel.errors import ModelError
from cxrmodel.labels import LABELS

# The paper's frozen-backbone recipe: these tests are about the feature cache, resume and modes, and it
# is the recipe that trains in seconds.
FAST = ["--recipe", "frozen-backbone", "--max-images", "70", "--size", "32", "--views", "2", "--threads", "2",
        "--n-boot", "20", "--quiet"]


def _args(shared_data: Path, out: Path, *extra: str):
    return T.get_args_parser().parse_args(["--data", str(shared_data / "nih"), "--out", str(out), *FAST, *extra])


@pytest.fixture(scope="module")
def frozen_run(shared_data: Path, tmp_path_factory) -> tuple[Path, dict, tuple]:
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("frozen")
    pair = FC.aesgcm_pair(os.urandom(32))
    result = T.main(_args(shared_data, out, "--epochs", "3"), seal=pair[0], unseal=pair[1])
    return out, result, pair


def test_frozen_mode_keeps_backbone_and_batchnorm_statistics(frozen_run) -> None:
    out, result, _ = frozen_run
    trained = torch.load(out / T.MODEL_FILE, weights_only=True)
    fresh = T.build_model(seed=0).state_dict()
    bn_stats = [k for k in fresh if k.startswith("features.") and k.endswith(("running_mean", "running_var"))]
    assert bn_stats and all(torch.equal(trained[k], fresh[k]) for k in bn_stats)
    assert all(torch.equal(trained[k], fresh[k]) for k in fresh if k.startswith("features."))
    assert not torch.equal(trained["classifier.weight"], fresh["classifier.weight"])
    assert set(result["thresholds"]) == set(LABELS)
    assert result["training"]["feature_cache"] and len(result["training"]["history"]) == 3
    rep = result["test_report"]
    assert rep["n_images"] == result["training"]["images"]["test"] > 0
    assert (out / "roc_test.png").stat().st_size > 1000 and json.loads((out / T.RESULT_FILE).read_text())


def test_second_run_reads_features_from_the_sealed_cache(frozen_run, shared_data: Path) -> None:
    out, result, (seal, unseal) = frozen_run
    n_files = len(list((out / "features").rglob("*.feat")))
    images = result["training"]["images"]
    assert n_files == images["train"] * 2 + images["val"] + images["test"]
    again = T.main(_args(shared_data, out, "--epochs", "1"), seal=seal, unseal=unseal)
    assert len(list((out / "features").rglob("*.feat"))) == n_files  # nothing recomputed
    assert again["training"]["feature_seconds"] < result["training"]["feature_seconds"]


def test_child_process_style_cache_dir_and_key_file(frozen_run, shared_data: Path, tmp_path: Path) -> None:
    """The scheduler's child gets a persistent cache folder and a key file: the second run computes nothing."""
    key = tmp_path / "cache.key"
    key.write_text(os.urandom(32).hex())
    cache = tmp_path / "cache"
    T.main(_args(shared_data, tmp_path / "r1", "--epochs", "1", "--cache-dir", str(cache), "--cache-key-file", str(key)))
    files = sorted(cache.rglob("*.feat"))
    assert files and not (tmp_path / "r1" / "features").exists()
    T.main(_args(shared_data, tmp_path / "r2", "--epochs", "1", "--cache-dir", str(cache), "--cache-key-file", str(key)))
    assert sorted(cache.rglob("*.feat")) == files
    key.write_bytes(b"short")
    with pytest.raises(ModelError, match="32 bytes"):
        T.main(_args(shared_data, tmp_path / "r3", "--cache-dir", str(cache), "--cache-key-file", str(key)))


def test_resume_continues_exactly_where_it_stopped(shared_data: Path, tmp_path: Path) -> None:
    straight = T.main(_args(shared_data, tmp_path / "a", "--epochs", "3"))
    T.main(_args(shared_data, tmp_path / "b", "--epochs", "2"))
    resumed = T.main(_args(shared_data, tmp_path / "b", "--epochs", "3", "--resume"))
    a = torch.load(tmp_path / "a" / T.MODEL_FILE, weights_only=True)["classifier.weight"]
    b = torch.load(tmp_path / "b" / T.MODEL_FILE, weights_only=True)["classifier.weight"]
    assert torch.allclose(a, b, atol=1e-6)
    assert [h["epoch"] for h in resumed["training"]["history"]] == [1, 2, 3]
    assert straight["test_report"]["mean_auroc"] == pytest.approx(resumed["test_report"]["mean_auroc"], abs=1e-6)
    with pytest.raises(ModelError, match="no checkpoint"):
        T.main(_args(shared_data, tmp_path / "c", "--resume"))


def test_standardised_head_is_folded_into_a_plain_densenet(shared_data: Path, tmp_path: Path) -> None:
    result = T.main(_args(shared_data, tmp_path, "--epochs", "2", "--standardize", "--weight-decay", "0.1"))
    model, loaded = T.load_trained(tmp_path)
    # whole-network probabilities equal what the cached-feature path reported on the test split
    from cxrmodel.chestxray14 import read_dataset
    ds = read_dataset(shared_data / "nih")
    names = set(loaded["test_images"])
    test = [e for e in ds.splits["test"] if e.image in names]
    spec = T.PreprocessSpec.from_dict(loaded["preprocessing"])
    P = E.predict_paths(model, [e.path for e in test], spec)
    from cxrmodel.chestxray14 import label_matrix
    full = E.report(label_matrix(test), P, result["thresholds"], n_boot=0)
    assert full["mean_auroc"] == pytest.approx(result["test_report"]["mean_auroc"], abs=1e-3)


def test_finetune_and_paper_modes_update_the_whole_network(shared_data: Path, tmp_path: Path) -> None:
    T.main(_args(shared_data, tmp_path / "ft", "--mode", "finetune", "--epochs", "1", "--size", "32"))
    trained = torch.load(tmp_path / "ft" / T.MODEL_FILE, weights_only=True)
    fresh = T.build_model(seed=0).state_dict()
    assert not torch.equal(trained["features.norm0.running_mean"], fresh["features.norm0.running_mean"])
    assert not torch.equal(trained["features.conv0.weight"], fresh["features.conv0.weight"])
    paper = T.main(_args(shared_data, tmp_path / "paper", "--reproduce-paper", "--epochs", "1"))
    assert paper["activation"] == "softmax" and paper["training"]["batch_size"] == 2


def test_compare_promotes_only_without_regressions() -> None:
    rng = np.random.default_rng(0)
    Y = (rng.random((200, 14)) < 0.3).astype(np.float32)
    good = E.report(Y, Y * 0.3 + rng.random((200, 14)) * 0.5, n_boot=0)
    weak = E.report(Y, Y * 0.1 + rng.random((200, 14)) * 0.5, n_boot=0)
    ok, reasons = E.compare(good, weak, 0.02)
    assert ok, reasons
    ok, reasons = E.compare(weak, good, 0.02)
    assert not ok and any("below" in r for r in reasons) and any("drops" in r for r in reasons)
    assert E.compare(good, None, 0.02)[0]
    # one label collapsing blocks promotion even when the mean improves
    P = Y * 0.9 + rng.random((200, 14)) * 0.3
    P[:, 3] = rng.random(200)
    mixed = E.report(Y, P, n_boot=0)
    ok, reasons = E.compare(mixed, good, 0.02)
    assert mixed["mean_auroc"] > good["mean_auroc"] and not ok and any(LABELS[3] in r for r in reasons)


def test_report_has_the_documented_fields(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    Y = (rng.random((120, 14)) < 0.3).astype(np.float32)
    Y[:, 13] = 0  # a label without positives stays undefined, not NaN
    P = np.clip(Y * 0.5 + rng.random((120, 14)) * 0.6, 0, 1)
    thresholds = E.choose_thresholds(Y, P)
    rep = E.report(Y, P, thresholds, n_boot=100)
    json.dumps(rep, allow_nan=False)
    lab = rep["labels"][LABELS[0]]
    assert lab["auroc_ci95"][0] <= lab["auroc"] <= lab["auroc_ci95"][1]
    assert {"average_precision", "accuracy", "f1", "ece", "threshold"} <= set(lab)
    assert rep["labels"][LABELS[13]]["auroc"] is None and thresholds[LABELS[13]] == 0.5
    assert rep["mean_auroc_ci95"][0] <= rep["mean_auroc"] <= rep["mean_auroc_ci95"][1]
    png = E.write_roc_png(Y, P, tmp_path / "roc.png")
    from PIL import Image
    assert Image.open(png).size == (980, 720)


def test_default_recipe_is_bootstrap_and_explicit_options_win(shared_data: Path, tmp_path: Path) -> None:
    """A new user's `cxrd train --data X` trains the best recipe we have, not the chance-level paper's."""
    parse = T.get_args_parser().parse_args
    base = ["--data", str(shared_data / "nih"), "--out", str(tmp_path)]
    default = T.apply_recipe(parse(base))
    assert default.recipe == T.DEFAULT_RECIPE == "bootstrap"
    assert (default.mode, default.size, default.epochs, default.batch_size) == ("finetune", 128, 10, 16)
    mine = T.apply_recipe(parse([*base, "--epochs", "2", "--size", "64"]))
    assert (mine.recipe, mine.mode, mine.epochs, mine.size) == ("bootstrap", "finetune", 2, 64)
    paper = T.apply_recipe(parse([*base, "--recipe", "frozen-backbone"]))
    assert (paper.mode, paper.size, paper.batch_size) == ("frozen", 224, None)
    assert T.apply_recipe(parse([*base, "--mode", "frozen"])).recipe == "frozen-backbone"
    again = T.apply_recipe(T.apply_recipe(parse([*base, "--lr", "0.01"])))
    assert again.lr == 0.01 and again.recipe == "bootstrap"
