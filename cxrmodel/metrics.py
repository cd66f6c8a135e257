"""Classification metrics in plain numpy (scikit-learn is not a runtime dependency).

Every function takes `y` (0/1 truth) and `s` (scores, higher = more likely positive) for one label;
`per_label_report` applies them to a (N, 14) matrix. Undefined values (a label with no positives
in the evaluation set) are `None`, never NaN, so reports stay valid JSON.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np


def _check(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(bool).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"truth and scores differ in length ({y.size} vs {s.size})")
    return y, s


def _ranks(s: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean rank."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # boundaries of runs of equal values
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U; ties count one half)."""
    y, s = _check(y, s)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    r = _ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), starting at (0, 0) with threshold +inf; a point per distinct score."""
    y, s = _check(y, s)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    tps = np.cumsum(y_sorted)[last]
    fps = (last + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fpr, tpr, thresholds


def roc_points(y: np.ndarray, s: np.ndarray, max_points: int = 64) -> dict[str, list[float]] | None:
    """The ROC curve thinned to at most `max_points` points (both ends kept), rounded to 4 decimals:
    small enough to store with every evaluation and draw later, without the scores themselves."""
    y, s = _check(y, s)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, s)
    if fpr.size > max_points:
        keep = np.unique(np.round(np.linspace(0, fpr.size - 1, max(max_points, 2))).astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(v), 4) for v in fpr], "tpr": [round(float(v), 4) for v in tpr]}


def average_precision(y: np.ndarray, s: np.ndarray) -> float | None:
    """Step-wise area under precision-recall: sum over thresholds of (R_n - R_{n-1}) * P_n."""
    y, s = _check(y, s)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    tps = np.cumsum(y_sorted)[last].astype(np.float64)
    precision = tps / (last + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def youden_threshold(y: np.ndarray, s: np.ndarray) -> float | None:
    """Operating threshold maximising sensitivity + specificity - 1 (chosen on validation data)."""
    y, s = _check(y, s)
    if y.all() or not y.any():
        return None
    fpr, tpr, thr = roc_curve(y, s)
    best = int(np.argmax(tpr[1:] - fpr[1:])) + 1  # skip the +inf point
    return float(thr[best])


def confusion_at(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, int]:
    y, s = _check(y, s)
    pred = s >= threshold
    return {
        "tp": int(np.sum(pred & y)),
        "fp": int(np.sum(pred & ~y)),
        "tn": int(np.sum(~pred & ~y)),
        "fn": int(np.sum(~pred & y)),
    }


def accuracy_f1(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float | None]:
    c = confusion_at(y, s, threshold)
    n = sum(c.values())
    acc = (c["tp"] + c["tn"]) / n if n else 0.0
    denom = 2 * c["tp"] + c["fp"] + c["fn"]
    f1 = 2 * c["tp"] / denom if denom else None
    return float(acc), (None if f1 is None else float(f1))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-width probability bins: sum_b |B|/N * |mean(y_b) - mean(p_b)|."""
    y, p = _check(y, p)
    if y.size == 0:
        return 0.0
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / y.size * abs(y[m].mean() - p[m].mean())
    return float(total)


def bootstrap_auc_ci(
    y: np.ndarray, s: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of AUROC, resampling images; resamples with one class are skipped."""
    y, s = _check(y, s)
    if y.all() or not y.any():
        return None
    return _percentile_bootstrap(y.size, lambda i: roc_auc(y[i], s[i]), n_boot, alpha, seed)


def _percentile_bootstrap(n: int, statistic: Callable[[np.ndarray], float | None], n_boot: int, alpha: float,
                          seed: int) -> tuple[float, float] | None:
    """The (alpha/2, 1 - alpha/2) quantiles of `statistic` over `n_boot` resamples of n images drawn
    with replacement; resamples where it is undefined (None) are skipped. The seed fixes the draws,
    so a model's interval is the same every time it is judged."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        v = statistic(rng.integers(0, n, n))
        if v is not None:
            values.append(v)
    if not values:
        return None
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def mean_defined(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def per_label_aucs(Y: np.ndarray, P: np.ndarray) -> list[float | None]:
    return [roc_auc(Y[:, k], P[:, k]) for k in range(Y.shape[1])]


def mean_auroc(Y: np.ndarray, P: np.ndarray) -> float | None:
    return mean_defined(per_label_aucs(Y, P))


def bootstrap_mean_auc_ci(
    Y: np.ndarray, P: np.ndarray, columns: list[int], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean AUROC over `columns`, resampling images jointly (the
    findings of one image are correlated). Only columns with enough positives should be passed: a
    finding with one or two positives gives AUROCs of 0 or 1 that make the interval meaningless."""
    Y, P = np.asarray(Y), np.asarray(P, dtype=np.float64)
    if not columns or Y.shape[0] == 0:
        return None
    return _percentile_bootstrap(
        Y.shape[0], lambda i: mean_defined([roc_auc(Y[i, k], P[i, k]) for k in columns]), n_boot, alpha, seed)
