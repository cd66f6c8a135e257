"""Live performance of one model version on studies that have both its prediction and ground truth.

Per finding: AUROC with a percentile bootstrap 95% CI (`metrics.bootstrap_auc_ci`), sensitivity and
specificity at the model's own operating threshold (the one its predictions and reports call
positives with) with Wilson score 95% intervals, and calibration (expected calibration error over
ten equal-width bins, and the bins themselves for a reliability plot).

Few positives make all of these noisy: a finding with fewer than `min_cases` positive or fewer than
`min_cases` negative images gets `too_few` set and a reason ("too few positives (n=3)") instead of
AUROC and sensitivity/specificity numbers; its counts are still reported. Undefined values are None.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import metrics as M

Z95 = 1.959963984540054
DEFAULT_MIN_CASES = 10


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion; None when n is 0. Stays inside [0, 1] at 0/n and n/n,
    where the normal approximation would collapse to a zero-width interval."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width probability bins: count, mean predicted probability and observed positive share."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "n": n,
                    "mean_predicted": float(p[m].mean()) if n else None,
                    "observed": float(y[m].mean()) if n else None})
    return out


def label_performance(y: Sequence[int], s: Sequence[float], threshold: float, *, min_cases: int = DEFAULT_MIN_CASES,
                      n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """One finding's live numbers (module docstring); `y` is 0/1 truth, `s` the model's scores."""
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    s_arr = np.asarray(s, dtype=np.float64).ravel()
    n = int(y_arr.size)
    pos = int(y_arr.sum())
    neg = n - pos
    out: dict[str, Any] = {"n": n, "positives": pos, "negatives": neg, "threshold": float(threshold),
                           "too_few": False, "reason": ""}
    if n:
        out["ece"] = M.expected_calibration_error(y_arr, s_arr)
        out["reliability"] = reliability_bins(y_arr, s_arr)
    else:
        out["ece"], out["reliability"] = None, []
    if pos < min_cases or neg < min_cases:
        which = f"positives (n={pos})" if pos < min_cases else f"negatives (n={neg})"
        out.update(too_few=True, reason=f"too few {which}; at least {min_cases} of each are needed",
                   auroc=None, auroc_ci95=None, sensitivity=None, sensitivity_ci95=None,
                   specificity=None, specificity_ci95=None)
        return out
    c = M.confusion_at(y_arr, s_arr, threshold)
    ci = M.bootstrap_auc_ci(y_arr, s_arr, n_boot=n_boot, seed=seed) if n_boot else None
    sens_ci = wilson_interval(c["tp"], c["tp"] + c["fn"])
    spec_ci = wilson_interval(c["tn"], c["tn"] + c["fp"])
    out.update(auroc=M.roc_auc(y_arr, s_arr), auroc_ci95=list(ci) if ci else None, confusion=c,
               sensitivity=c["tp"] / (c["tp"] + c["fn"]), sensitivity_ci95=list(sens_ci) if sens_ci else None,
               specificity=c["tn"] / (c["tn"] + c["fp"]), specificity_ci95=list(spec_ci) if spec_ci else None)
    return out


def live_performance(Y: np.ndarray, P: np.ndarray, labels: Sequence[str], thresholds: Sequence[float], *,
                     min_cases: int = DEFAULT_MIN_CASES, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per finding `label_performance`; a column of Y may hold NaN where the truth is unknown for that
    finding (an uncertain report mention): those images are left out of that finding only."""
    Y = np.asarray(Y, dtype=np.float64)
    P = np.asarray(P, dtype=np.float64)
    out: dict[str, Any] = {"n_images": int(Y.shape[0]) if Y.ndim == 2 else 0, "min_cases": min_cases, "labels": {}}
    for k, label in enumerate(labels):
        if Y.ndim != 2 or Y.shape[0] == 0:
            out["labels"][label] = label_performance([], [], thresholds[k], min_cases=min_cases, n_boot=0)
            continue
        known = ~np.isnan(Y[:, k])
        out["labels"][label] = label_performance(Y[known, k], P[known, k], thresholds[k], min_cases=min_cases,
                                                 n_boot=n_boot, seed=seed + k)
    return out
