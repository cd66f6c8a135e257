"""Batched CPU inference with the fastest backend that keeps fp32's accuracy.

Two layers:
- `Engine.predict(batch) -> (N, 14) probabilities`: synchronous core, one forward per call.
- `Engine.submit(image) -> Future`: thread-safe front for the daemon's workers. A background thread
  collects up to `batch_size` images, or whatever arrived within `max_batch_wait_ms` of the first,
  and runs them as one batch: DenseNet121 on CPU does several times more images per second in
  batches than one by one, and a PACS often sends a study's images together.

Backends: "fp32", "channels_last" (NHWC memory layout; oneDNN's preferred layout),
"bf16" (channels_last, dense blocks in bfloat16 autocast, stem and head in fp32; AVX-512 BF16/AMX) and
"onnx" (ONNX Runtime, graph exported once to the model's directory). The torch backends run as a
traced TorchScript graph (`_Graph`: no GIL per operator). "auto" measures the
`AUTO_CANDIDATES` once on this machine (a few seconds), rejects any whose probabilities stray from
fp32 on the measurement batch, picks the fastest and caches the choice beside the model, keyed by
a machine fingerprint.

Only backends proven to keep every label's AUROC within 0.005 of fp32 on real radiographs
(tests/cxrmodel/test_engine.py) are auto candidates. Autocast of the whole module does not stay
within that bound on real ChestX-ray14 films, hence the fp32 edges of `_Bf16Blocks`.
Torch's own backends slow down badly when their intra-op threads compete with other processes
for the same cores; `threads` should not exceed the cores this service really has to itself.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import queue
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ModelError
from .network import ChestNet, probabilities

log = logging.getLogger(__name__)

BACKENDS = ("fp32", "channels_last", "bf16", "onnx")
AUTO_CANDIDATES = ("fp32", "channels_last", "bf16", "onnx")  # each within the AUROC bound (module doc)
AUTO_MAX_PROB_DIFF = 0.02  # run-time sanity bound vs fp32 when choosing "auto"
_CHOICE_FILE = "backend.json"
# Structured log fields, the key daemon.ops.logs reads (cxrmodel sits below daemon and cannot import
# it): event names and these fields are printed as written, so they must never hold patient data.
_FIELDS = "cxrd_fields"

Runner = Callable[[torch.Tensor], torch.Tensor]  # (N, C, H, W) float32 -> (N, 14) logits


def bf16_supported() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (otherwise bf16 is emulated and slow)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_runner(module: ChestNet, backend: str, *, threads: int = 0, onnx_path: Path | None = None,
                sample: torch.Tensor | None = None) -> Runner:
    """A callable computing logits with one backend. The module is not modified (fp32 traces it
    as it is, sharing its parameters; the other backends work on a copy)."""
    import copy

    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    if backend == "onnx":
        return _onnx_runner(module, threads=threads, onnx_path=onnx_path, sample=sample)
    m: torch.nn.Module = module if backend == "fp32" else copy.deepcopy(module)
    m.eval()
    layout = torch.contiguous_format
    if backend != "fp32":
        m, layout = m.to(memory_format=torch.channels_last), torch.channels_last
    if backend == "bf16":
        m = _Bf16Blocks(m)
    graph = _Graph(m)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return graph(x.contiguous(memory_format=layout))
    run.graph = graph  # type: ignore[attr-defined]  # for tests: was it really traced?
    return run


class _Graph:
    """The module traced to a TorchScript graph on its first input, so a forward runs without the GIL.

    In `cxrd serve` the forward shares the process with the DICOM receive path, de-identification
    and the database, all Python. Eager PyTorch takes the GIL for each of DenseNet's ~600 operator
    calls, so one busy Python thread beside it starves an eager forward; the traced graph is one
    GIL-free call (like ONNX Runtime) and keeps its speed. Tracing is exact for this network (no data-dependent control flow; the graph
    is batch-size generic) and also drops Python's per-operator overhead. `torch.jit.trace` is
    deprecated in favour of torch.compile/torch.export, which need a C++ compiler at run time; torch
    is pinned, and a trace that fails falls back to the eager module.
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self._traced: Any = None
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._traced is None:
            with self._lock:
                if self._traced is None:
                    self._traced = self._trace(x)
        return self._traced(x)

    def _trace(self, x: torch.Tensor) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.jit.trace(self.module, x, check_trace=False)
        except Exception as exc:  # an exotic imported module: slower but correct
            log.warning("engine.trace_failed", extra={_FIELDS: {"error": type(exc).__name__, "running": "eager"}})
            return self.module


class _Bf16Blocks(torch.nn.Module):
    """DenseNet's dense blocks and transitions in bfloat16 autocast; the stem and the head in fp32.

    bf16 activations are what make autocast fast here (half the memory traffic through DenseNet's
    growing concatenations), but autocast of the whole module does not keep every label's AUROC
    within the engine's bound of fp32. The error comes from the edges: the classifier's 1024-term
    dot products in bf16 and the stem's first rounding of the raw pixels. Keeping those two in fp32
    costs little, since the stem is one convolution and the head one linear layer, and the dense
    blocks keep their bf16 speed. (Measurements: docs/performance.md.)
    """

    def __init__(self, net: ChestNet):
        super().__init__()
        self.net = net
        layers = list(net.features.children())
        stem = 4  # conv0, norm0, relu0, pool0
        self.stem = torch.nn.Sequential(*layers[:stem])
        self.blocks = torch.nn.Sequential(*layers[stem:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = self.blocks(h)
        pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(torch.relu(h.float()), 1), 1)
        return self.net.head(pooled)


def export_onnx(module: ChestNet, path: Path, sample: torch.Tensor) -> Path:
    """Export with a dynamic batch axis; written to a temp name and renamed (another process may read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (sample[:1].float(),), str(tmp), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False, do_constant_folding=True)
    os.replace(tmp, path)
    return path


def _onnx_runner(module: ChestNet, *, threads: int, onnx_path: Path | None, sample: torch.Tensor | None) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("backend onnx needs the onnxruntime package") from None
    if sample is None:
        raise ModelError("backend onnx needs a sample input to export the graph")
    if onnx_path is None:
        import tempfile
        onnx_path = Path(tempfile.mkdtemp(prefix="cxrd-onnx-")) / "model.onnx"
    if not onnx_path.is_file():
        export_onnx(module, onnx_path, sample)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads if threads > 0 else (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        out = session.run(["logits"], {"image": np.ascontiguousarray(x.float().numpy())})[0]
        return torch.from_numpy(out)
    return run


def machine_fingerprint(threads: int, batch_size: int) -> str:
    """What a backend timing depends on: CPU model and flags, library versions, threads, batch size."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                cpu += line
            if line.startswith("flags"):
                break
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "none"
    text = f"{cpu}|{torch.__version__}|{ort_version}|{threads}|{batch_size}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure(runner: Runner, batch: torch.Tensor, repeats: int = 3) -> float:
    """Best-of-`repeats` seconds per batch after one warm-up run (first runs pay oneDNN's setup)."""
    runner(batch)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        runner(batch)
        best = min(best, time.perf_counter() - t)
    return best


def choose_backend(module: ChestNet, sample_shape: Sequence[int], *, threads: int = 0, batch_size: int = 8,
                   cache_dir: Path | None = None, candidates: Sequence[str] = AUTO_CANDIDATES,
                   repeats: int = 2) -> tuple[str, dict[str, Any]]:
    """Measure candidates on this machine; returns (backend, report). Cached in `cache_dir`."""
    key = machine_fingerprint(threads, batch_size)
    cache = cache_dir / _CHOICE_FILE if cache_dir is not None else None
    if cache is not None and cache.is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError, KeyError, TypeError):
            data = json.loads(cache.read_text())
            if key in data and data[key]["backend"] in candidates:
                log.info("engine.backend_cached", extra={_FIELDS: {
                    "backend": data[key]["backend"], "measured": data[key].get("measured", ""),
                    "images_per_s": _rates(data[key].get("images_per_s", {}))}})
                return data[key]["backend"], data[key]
    # A backlog waits on this (the first load of a model on this machine, seconds): say so.
    log.info("engine.backend_measuring", extra={_FIELDS: {
        "candidates": ",".join(candidates), "threads": threads, "batch_size": batch_size,
        "why": "first load of this model on this machine; the choice is then kept beside the model"}})
    started = time.monotonic()
    gen = torch.Generator().manual_seed(0)
    # A smooth, image-like input (not white noise) so reduced precision is judged on realistic activations.
    base = torch.rand((batch_size, 1, 16, 16), generator=gen)
    batch = torch.nn.functional.interpolate(base, size=tuple(sample_shape[-2:]), mode="bilinear",
                                            align_corners=False).expand(-1, sample_shape[0], -1, -1).contiguous()
    batch = (batch - 0.5) / 0.25
    with torch.inference_mode():
        reference = probabilities(module(batch), module.arch.activation)
    timings: dict[str, float] = {}
    rejected: dict[str, str] = {}
    for name in candidates:
        if name == "bf16" and not bf16_supported():
            rejected[name] = "no native bf16 on this CPU"
            continue
        try:
            runner = make_runner(module, name, threads=threads, sample=batch,
                                 onnx_path=(cache_dir / "model.onnx") if cache_dir is not None else None)
            probs = probabilities(runner(batch).float(), module.arch.activation)
            diff = float((probs - reference).abs().max())
            if diff > AUTO_MAX_PROB_DIFF:
                rejected[name] = f"max probability difference {diff:.4f} vs fp32"
                continue
            timings[name] = measure(runner, batch, repeats)
        except Exception as exc:  # a backend that fails here is simply not chosen
            rejected[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
    if not timings:
        raise ModelError("no inference backend works on this machine: " + "; ".join(f"{k}: {v}" for k, v in rejected.items()))
    best = min(timings, key=timings.get)
    report = {"backend": best, "images_per_s": {k: round(batch_size / v, 2) for k, v in timings.items()},
              "rejected": rejected, "threads": threads, "batch_size": batch_size,
              "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    fields = {"backend": best, "images_per_s": _rates(report["images_per_s"]),
              "seconds": round(time.monotonic() - started, 1)}
    if rejected:
        fields["rejected"] = "; ".join(f"{k}: {v}" for k, v in rejected.items())
    log.info("engine.backend_chosen", extra={_FIELDS: fields})
    if cache is not None:
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        try:
            data = {}
            if cache.is_file():
                with contextlib.suppress(json.JSONDecodeError):
                    data = json.loads(cache.read_text())
            data[key] = report
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            os.replace(tmp, cache)
        except OSError as exc:  # still usable; only the next start measures again
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("engine.backend_not_cached", extra={_FIELDS: {
                "path": str(cache), "error": exc.strerror or type(exc).__name__,
                "hint": "the model directory must be writable by the service user, or every start measures"}})
    return best, report


def _rates(images_per_s: dict[str, float]) -> str:
    """`fp32:14.03,onnx:25.1`: one logfmt token, backend names readable."""
    return ",".join(f"{name}:{rate}" for name, rate in images_per_s.items())


_STOP = object()


class Engine:
    """One model ready for inference: `predict` for a batch in hand, `submit` for images arriving one by one."""

    def __init__(self, module: ChestNet, *, input_shape: Sequence[int] = (3, 224, 224), backend: str = "auto",
                 threads: int = 0, batch_size: int = 8, max_batch_wait_ms: int = 50,
                 cache_dir: str | Path | None = None):
        if batch_size < 1:
            raise ModelError("batch_size must be at least 1")
        if threads > 0:
            torch.set_num_threads(threads)  # process-wide: the daemon runs one engine per process
        self.module = module.eval()
        self.activation = module.arch.activation
        self.input_shape = tuple(int(s) for s in input_shape)
        self.batch_size = batch_size
        self.max_batch_wait = max(0, max_batch_wait_ms) / 1000.0
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.report: dict[str, Any] = {}
        if backend == "auto":
            backend, self.report = choose_backend(module, self.input_shape, threads=threads, batch_size=batch_size,
                                                  cache_dir=self.cache_dir)
        sample = torch.zeros((1, *self.input_shape))
        self.backend = backend
        self._run = make_runner(module, backend, threads=threads, sample=sample,
                                onnx_path=(self.cache_dir / "model.onnx") if self.cache_dir is not None else None)
        for _ in range(2):  # trace + the JIT's profiling run now, not on the first study
            self._run(sample)
        self._lock = threading.Lock()  # one forward at a time: parallel forwards only fight for cores
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    @classmethod
    def for_model(cls, loaded: Any, **kwargs: Any) -> "Engine":
        """Engine for a `registry.LoadedModel`; the backend choice and ONNX graph are cached in its directory."""
        spec = loaded.manifest.preprocessing
        kwargs.setdefault("cache_dir", loaded.path)
        return cls(loaded.module, input_shape=(spec.channels, spec.size, spec.size), **kwargs)

    # ---------------------------------------------------------------- synchronous core
    def predict(self, batch: torch.Tensor) -> np.ndarray:
        """(N, C, H, W) or (C, H, W) -> (N, 14) float32 probabilities in `labels.LABELS` order."""
        if batch.ndim == 3:
            batch = batch[None]
        if tuple(batch.shape[1:]) != self.input_shape:
            raise ModelError(f"input shape {tuple(batch.shape[1:])} does not match the model's {self.input_shape}")
        with self._lock:
            logits = self._run(batch.float())
        return probabilities(logits.float(), self.activation).numpy().astype(np.float32)

    # ---------------------------------------------------------------- batching front
    def submit(self, image: torch.Tensor) -> Future:
        """Queue one (C, H, W) image; the Future resolves to its (14,) probabilities (or the error)."""
        if self._closed:
            raise ModelError("engine is closed")
        if tuple(image.shape) != self.input_shape:
            raise ModelError(f"input shape {tuple(image.shape)} does not match the model's {self.input_shape}")
        fut: Future = Future()
        self._queue.put((image, fut))
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name="cxrd-inference", daemon=True)
                    self._thread.start()
        return fut

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            items = [item]
            deadline = time.monotonic() + self.max_batch_wait
            stop = False
            while len(items) < self.batch_size:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                items.append(nxt)
            live = [(img, f) for img, f in items if f.set_running_or_notify_cancel()]
            if live:
                try:
                    probs = self.predict(torch.stack([img for img, _ in live]))
                    for (_, f), p in zip(live, probs):
                        f.set_result(p)
                except BaseException as exc:  # deliver the failure to every waiter; keep serving
                    for _, f in live:
                        f.set_exception(exc)
            if stop:
                return

    def close(self) -> None:
        """Finish queued work and stop the batching thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
