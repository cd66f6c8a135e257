"""numpy metrics against textbook values and brute-force definitions."""
from __future__ import annotations

import numpy as np
import pytest

from cxrmodel import metrics as M


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_auroc_known_value_and_brute_force_with_ties() -> None:
    assert M.roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # coarse scores: many ties
    assert M.roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)
    assert M.roc_auc(y, -s) == pytest.approx(1 - _pairwise_auc(y, s), abs=1e-12)


def test_auroc_undefined_without_both_classes() -> None:
    assert M.roc_auc(np.zeros(5), np.arange(5)) is None
    assert M.bootstrap_auc_ci(np.ones(5), np.arange(5)) is None
    assert M.mean_defined([None, 0.5, 0.7]) == pytest.approx(0.6)


def test_roc_curve_ends_at_corners_and_area_matches_auc() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = rng.random(200) + 0.5 * y
    fpr, tpr, thr = M.roc_curve(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.isinf(thr[0])
    assert np.trapezoid(tpr, fpr) == pytest.approx(M.roc_auc(y, s))


def test_average_precision_known_value() -> None:
    # sklearn.metrics.average_precision_score([0,0,1,1],[0.1,0.4,0.35,0.8]) == 0.8333...
    assert M.average_precision(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(5 / 6)
    assert M.average_precision(np.array([1, 1, 0]), np.array([0.9, 0.8, 0.1])) == pytest.approx(1.0)


def test_youden_threshold_separates_perfectly_separable_scores() -> None:
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    t = M.youden_threshold(y, s)
    assert t == pytest.approx(0.7)
    acc, f1 = M.accuracy_f1(y, s, t)
    assert acc == 1.0 and f1 == 1.0
    acc, f1 = M.accuracy_f1(y, s, 0.95)
    assert acc == pytest.approx(0.6) and f1 == 0.0


def test_ece_zero_when_calibrated_and_large_when_not() -> None:
    y = np.array([1, 0] * 50)
    assert M.expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert M.expected_calibration_error(y, np.full(100, 0.95)) == pytest.approx(0.45)


def test_bootstrap_ci_contains_estimate_and_narrows_with_data() -> None:
    rng = np.random.default_rng(2)
    y_small = rng.integers(0, 2, 60)
    s_small = rng.random(60) + 0.4 * y_small
    y_big = rng.integers(0, 2, 2000)
    s_big = rng.random(2000) + 0.4 * y_big
    lo, hi = M.bootstrap_auc_ci(y_small, s_small, n_boot=300)
    assert lo <= M.roc_auc(y_small, s_small) <= hi
    lo2, hi2 = M.bootstrap_auc_ci(y_big, s_big, n_boot=300)
    assert hi2 - lo2 < hi - lo
