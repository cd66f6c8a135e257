"""Inference engine: backends keep fp32's accuracy on real radiographs; batching front; auto choice."""
from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrmodel import engine as E
from cxrmodel import preprocess as P
from cxrmodel.errors import ModelError
from cxrmodel.labels import LABELS, multi_hot
from cxrmodel.network import build_model

torch.set_num_threads(2)
AUROC_TOLERANCE = 0.005


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUROC with tied scores sharing their average rank."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = labels.sum()
    neg = len(labels) - pos
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def test_auroc_helper():
    assert auroc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([0.4, 0.3, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 0, 1])) == 0.5


def real_sample(nih: Path, per_label: int = 12, total: int = 200) -> list[list[str]]:
    """~200 real ChestX-ray14 rows with at least `per_label` positives of every finding (rare ones
    included), filled up with 'No Finding' films: AUROC of a label with 1-2 positives would move by
    0.005 on a single swapped pair and prove nothing."""
    with open(nih / "Data_Entry_2017.csv", newline="") as fh:
        rows = sorted(r for r in csv.reader(fh) if r and r[0].endswith(".png"))
    chosen: dict[str, list[str]] = {}
    for label in LABELS:
        for r in [r for r in rows if label in r[1].split("|")][:per_label]:
            chosen[r[0]] = r
    for r in rows:
        if len(chosen) >= total:
            break
        if r[1] == "No Finding":
            chosen.setdefault(r[0], r)
    return list(chosen.values())


@pytest.fixture(scope="module")
def model():
    return build_model(seed=0).eval()


@pytest.fixture(scope="module")
def real_batch(shared_data):
    nih = shared_data / "nih"
    rows = real_sample(nih)
    x = torch.stack([P.preprocess(nih / "images" / r[0]) for r in rows])
    y = np.array([multi_hot(r[1]) for r in rows])
    assert len(rows) >= 190 and y.sum(0).min() >= 12
    return x, y


def run_all(runner, x: torch.Tensor, activation: str = "sigmoid") -> np.ndarray:
    from cxrmodel.network import probabilities
    return np.concatenate([probabilities(runner(x[i:i + 8]).float(), activation).numpy()
                           for i in range(0, len(x), 8)])


_FP32: dict[int, np.ndarray] = {}


def fp32_reference(seed: int, x: torch.Tensor) -> np.ndarray:
    if seed not in _FP32:
        _FP32[seed] = run_all(E.make_runner(build_model(seed=seed).eval(), "fp32"), x)
    return _FP32[seed]


@pytest.mark.slow
@pytest.mark.parametrize("backend,seed", [("bf16", 0), ("bf16", 1), ("onnx", 0)])
def test_backend_keeps_every_label_auroc_within_0005_of_fp32(backend, seed, real_batch, tmp_path):
    """Random initialisations are the hard case: their probabilities barely differ between films, so
    small arithmetic differences reorder them. bf16 is checked on two of them."""
    x, y = real_batch
    reference = fp32_reference(seed, x)
    probs = run_all(E.make_runner(build_model(seed=seed).eval(), backend, threads=2, sample=x[:1],
                                  onnx_path=tmp_path / "m.onnx"), x)
    deltas = {label: abs(auroc(probs[:, j], y[:, j]) - auroc(reference[:, j], y[:, j]))
              for j, label in enumerate(LABELS)}
    print(f"{backend} seed {seed}: max AUROC delta {max(deltas.values()):.4f}, max |p| diff "
          f"{np.abs(probs - reference).max():.2e}")
    assert max(deltas.values()) <= AUROC_TOLERANCE, deltas


def test_channels_last_is_fp32_arithmetic(model, real_batch):
    """channels_last only changes memory layout: same fp32 math, so probabilities agree to ~1e-7
    (the AUROC test above is for backends whose arithmetic differs)."""
    x = real_batch[0][:8]
    ref = run_all(E.make_runner(model, "fp32"), x)
    np.testing.assert_allclose(run_all(E.make_runner(model, "channels_last"), x), ref, atol=1e-5)
    assert set(E.AUTO_CANDIDATES) <= {"fp32", "channels_last", "bf16", "onnx"}  # each proven here


@pytest.mark.parametrize("backend,outputs", [("fp32", 14), ("channels_last", 14), ("bf16", 14), ("fp32", 18)])
def test_traced_graph_serves_every_batch_size_like_the_eager_module(backend, outputs, real_batch):
    """The graph is traced on the first call (here a single image); later batches of other sizes
    must give what the eager module gives, not a shape baked into the trace. 18 outputs: a
    TorchXRayVision-style model whose 14 labels are picked by index inside the graph."""
    import copy

    from cxrmodel.network import ArchSpec, build
    model = (build_model(seed=0) if outputs == 14 else
             build(ArchSpec(num_outputs=18, output_index=tuple(range(17, 3, -1))), seed=0)).eval()
    x = real_batch[0][:5]
    runner = E.make_runner(model, backend)
    first = runner(x[:1])
    assert isinstance(runner.graph._traced, torch.jit.ScriptModule)  # not the silent eager fallback
    cl = torch.channels_last
    with torch.inference_mode():
        if backend == "bf16":
            expected = E._Bf16Blocks(copy.deepcopy(model).to(memory_format=cl))(x.contiguous(memory_format=cl))
        else:
            expected = model(x)
    assert expected.shape == (5, 14)
    np.testing.assert_allclose(first.numpy(), expected[:1].numpy(), atol=1e-5)
    np.testing.assert_allclose(runner(x[1:4]).numpy(), expected[1:4].numpy(), atol=1e-5)
    np.testing.assert_allclose(runner(x).numpy(), expected.numpy(), atol=1e-5)


def test_submit_collects_batches_and_returns_each_images_result(model, real_batch):
    x = real_batch[0][:6]
    engine = E.Engine(model, backend="fp32", batch_size=4, max_batch_wait_ms=500)
    sizes: list[int] = []
    run = engine._run
    engine._run = lambda b: (sizes.append(len(b)), run(b))[1]
    expected = engine.predict(x)
    sizes.clear()
    futures = [engine.submit(img) for img in x]
    got = np.stack([f.result(timeout=120) for f in futures])
    engine.close()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert sizes == [4, 2]  # four filled a batch at once; the last two waited, then ran together


def test_submit_from_many_threads_and_a_lone_image_waits_at_most_max_wait(model, real_batch):
    x = real_batch[0][:3]
    with E.Engine(model, backend="fp32", batch_size=8, max_batch_wait_ms=50) as engine:
        engine.predict(x[:1])  # warm up so the timing below is the wait, not oneDNN setup
        t = time.perf_counter()
        engine.submit(x[0]).result(timeout=60)
        single = time.perf_counter() - t
        t = time.perf_counter()
        engine.predict(x[:1])
        forward = time.perf_counter() - t
        assert single < forward + 0.05 + 2.0  # not held back waiting for a full batch
        results: dict[int, np.ndarray] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, engine.submit(x[i]).result(60)))
                   for i in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        direct = engine.predict(x)
    for i in range(3):
        np.testing.assert_allclose(results[i], direct[i], atol=1e-5)


def test_errors_reach_the_caller(model):
    engine = E.Engine(model, backend="fp32", batch_size=2, max_batch_wait_ms=1)
    with pytest.raises(ModelError, match="shape"):
        engine.submit(torch.zeros(1, 224, 224))
    engine._run = lambda b: (_ for _ in ()).throw(RuntimeError("boom"))
    fut = engine.submit(torch.zeros(3, 224, 224))
    with pytest.raises(RuntimeError, match="boom"):
        fut.result(timeout=30)
    engine.close()
    with pytest.raises(ModelError, match="closed"):
        engine.submit(torch.zeros(3, 224, 224))
    with pytest.raises(ModelError, match="unknown backend"):
        E.make_runner(model, "fp8")


def test_auto_measures_once_and_caches_the_choice(model, tmp_path, monkeypatch, caplog):
    from daemon.ops.logs import EventFormatter
    caplog.set_level("INFO", logger="cxrmodel.engine")
    backend, report = E.choose_backend(model, (3, 224, 224), threads=2, batch_size=2, cache_dir=tmp_path,
                                       candidates=("fp32", "onnx"), repeats=1)
    # The wait is announced before and its result after, with the backend names readable.
    lines = [EventFormatter().format(r) for r in caplog.records]
    assert "event=engine.backend_measuring" in lines[0] and "candidates=fp32,onnx" in lines[0]
    assert "event=engine.backend_chosen" in lines[-1] and f"backend={backend}" in lines[-1]
    assert "images_per_s=fp32:" in lines[-1] and ",onnx:" in lines[-1] and "<value>" not in lines[-1]
    caplog.clear()
    assert backend in ("fp32", "onnx") and set(report["images_per_s"]) == {"fp32", "onnx"}
    assert (tmp_path / "model.onnx").is_file()
    cached = json.loads((tmp_path / "backend.json").read_text())
    assert [v["backend"] for v in cached.values()] == [backend]
    monkeypatch.setattr(E, "measure", lambda *a, **k: pytest.fail("measured again"))
    engine = E.Engine(model, backend="auto", threads=2, batch_size=2, cache_dir=tmp_path)
    assert engine.backend == backend
    assert [r.getMessage() for r in caplog.records] == ["engine.backend_cached"]
    x = torch.zeros(2, 3, 224, 224)
    np.testing.assert_allclose(engine.predict(x), E.Engine(model, backend="fp32").predict(x), atol=1e-4)


def test_a_choice_that_cannot_be_kept_is_said_in_the_log(model, tmp_path, caplog):
    caplog.set_level("INFO", logger="cxrmodel.engine")
    blocked = tmp_path / "backend.json"
    blocked.mkdir()  # the cache file's name is taken by a directory: it cannot be written
    backend, _ = E.choose_backend(model, (3, 224, 224), threads=2, batch_size=2, cache_dir=tmp_path,
                                  candidates=("fp32",), repeats=1)
    assert backend == "fp32"
    warned = [r for r in caplog.records if r.getMessage() == "engine.backend_not_cached"]
    assert warned and warned[0].cxrd_fields["path"] == str(blocked)
