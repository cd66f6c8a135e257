"""The bootstrap floor measured over patient folds, not one split. Prints numbers; never fails.

    .venv/bin/python benchmarks/floor_cv.py [--size 224] [--seed 0] [--folds 5]

Floor (issue #7): a randomly initialised, frozen DenseNet121 with a logistic-regression head on its
pooled features. Features of all shared NIH images are computed once; heads (L2 strength chosen
on a patient-disjoint validation part of each training side) are then scored
- on the project's own patient-hash test split (what `cxrd train` reports), and
- over K patient-disjoint folds of all images (every image tested once),
for the floor and two cheap head variants on the same features: pooled features of every dense
stage, and a 2x2 spatial grid of the last one; and, as a yardstick, the same head on a 16x16
thumbnail of the input image, with no network at all. A recipe "clearly above the floor" should beat the
fold mean by more than the spread between folds that this prints.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrmodel.chestxray14 import label_matrix, patient_bucket, read_dataset  # noqa: E402
from cxrmodel.metrics import mean_auroc  # noqa: E402
from cxrmodel.network import build_model  # noqa: E402
from cxrmodel.preprocess import PreprocessSpec, preprocess  # noqa: E402

STAGES = ("transition1", "transition2", "transition3", "norm5")
HEADS = {"floor: last stage pooled (1024)": ["norm5"],
         "all four stages pooled (1920)": list(STAGES),
         "last stage, 2x2 grid (4096)": ["grid"],
         "no network: 16x16 thumbnail (256)": ["thumb"]}
L2 = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def features(paths: list[Path], size: int, seed: int) -> dict[str, torch.Tensor]:
    model = build_model(seed=seed).eval()
    taps: dict[str, torch.Tensor] = {}
    for name in STAGES:
        getattr(model.features, name).register_forward_hook(lambda m, i, o, n=name: taps.__setitem__(n, o))
    out: dict[str, list[torch.Tensor]] = {k: [] for k in (*STAGES, "grid", "thumb")}
    spec = PreprocessSpec(size=size)
    with torch.inference_mode():
        for start in range(0, len(paths), 32):
            batch = torch.stack([preprocess(p, spec) for p in paths[start:start + 32]])
            model.features(batch)
            out["thumb"].append(F.adaptive_avg_pool2d(batch[:, :1], 16).flatten(1))
            for name in STAGES:
                t = F.relu(taps[name]) if name == "norm5" else taps[name]
                out[name].append(F.adaptive_avg_pool2d(t, 1).flatten(1))
            out["grid"].append(F.adaptive_avg_pool2d(F.relu(taps["norm5"]), 2).flatten(1))
    return {k: torch.cat(v) for k, v in out.items()}


def fit(X: torch.Tensor, Y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch L-BFGS logistic regression, 14 outputs at once."""
    W = torch.zeros(X.shape[1], Y.shape[1], requires_grad=True)
    b = torch.zeros(Y.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(X @ W + b, Y) + l2 * (W ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return W.detach(), b.detach()


def score(X: torch.Tensor, Y: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray) -> float:
    """Standardise on train, pick L2 on val, mean AUROC on test."""
    mu, sd = X[train].mean(0), X[train].std(0) + 1e-6
    Z = (X - mu) / sd
    Yt = torch.from_numpy(Y.astype(np.float32))
    best = None
    for l2 in L2:
        W, b = fit(Z[train], Yt[train], l2)
        v = mean_auroc(Y[val], (Z[val] @ W + b).numpy())
        if best is None or v > best[0]:
            best = (v, W, b)
    _, W, b = best
    return float(mean_auroc(Y[test], (Z[test] @ W + b).numpy()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data" / "nih")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0, help="backbone initialisation")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ds = read_dataset(a.data)
    entries = ds.entries
    t0 = time.perf_counter()
    feats = features([e.path for e in entries], a.size, a.seed)
    print(f"{len(entries)} images, {len({e.patient_id for e in entries})} patients; "
          f"features in {time.perf_counter() - t0:.0f} s ({a.size} px, seed {a.seed})")
    Y = label_matrix(entries)
    index = {e.image: i for i, e in enumerate(entries)}
    split = {k: np.array([index[e.image] for e in v]) for k, v in ds.splits.items()}
    bucket = np.array([patient_bucket(e.patient_id, seed=7) for e in entries])  # fold by patient
    for name, keys in HEADS.items():
        X = torch.cat([feats[k] for k in keys], 1).float()
        on_split = score(X, Y, split["train"], split["val"], split["test"])
        folds = []
        for k in range(a.folds):
            lo, hi = k / a.folds, (k + 1) / a.folds
            test = np.where((bucket >= lo) & (bucket < hi))[0]
            rest = np.setdiff1d(np.arange(len(entries)), test)
            val = rest[np.argsort(bucket[rest])[: len(rest) // 8]]  # whole patients, by bucket order
            folds.append(score(X, Y, np.setdiff1d(rest, val), val, test))
        print(f"{name:34s} test split {on_split:.3f} | {a.folds}-fold mean {np.mean(folds):.3f} "
              f"(folds {min(folds):.3f}-{max(folds):.3f})", flush=True)


if __name__ == "__main__":
    main()
