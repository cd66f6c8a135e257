"""Live performance numbers against a case computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cxrmodel import live_metrics as LM

# three positives, three negatives; threshold 0.5
Y = [1, 1, 1, 0, 0, 0]
S = [0.9, 0.8, 0.4, 0.7, 0.3, 0.2]


def test_auroc_sensitivity_specificity_and_wilson_by_hand():
    r = LM.label_performance(Y, S, 0.5, min_cases=3, n_boot=200)
    # pairs positive > negative: 0.9 beats 3, 0.8 beats 3, 0.4 beats 0.3 and 0.2 -> 8 of 9
    assert r["auroc"] == pytest.approx(8 / 9)
    assert r["sensitivity"] == pytest.approx(2 / 3) and r["specificity"] == pytest.approx(2 / 3)
    assert r["confusion"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    # Wilson 95% for 2/3: centre (p + z^2/2n)/(1 + z^2/n), half-width z*sqrt(p(1-p)/n + z^2/4n^2)/(1 + z^2/n)
    z, n, p = 1.959963984540054, 3, 2 / 3
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert r["sensitivity_ci95"] == pytest.approx([centre - half, centre + half])
    assert r["sensitivity_ci95"][0] == pytest.approx(0.2077, abs=1e-3)
    lo, hi = r["auroc_ci95"]
    assert 0.0 <= lo <= 8 / 9 <= hi <= 1.0
    # ECE, ten bins: each score is alone in its bin -> mean |y - s| = (0.1+0.2+0.6+0.7+0.3+0.2)/6
    assert r["ece"] == pytest.approx((0.1 + 0.2 + 0.6 + 0.7 + 0.3 + 0.2) / 6)
    bins = {b["lo"]: b for b in r["reliability"] if b["n"]}
    assert bins[0.9]["observed"] == 1.0 and bins[0.7]["observed"] == 0.0 and sum(b["n"] for b in r["reliability"]) == 6


def test_too_few_positives_gives_a_flag_not_a_number():
    r = LM.label_performance([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0.9] + [0.1] * 11, 0.5, min_cases=10)
    assert r["too_few"] and r["auroc"] is None and r["sensitivity"] is None
    assert "too few positives (n=1)" in r["reason"]
    assert r["positives"] == 1 and r["negatives"] == 11 and r["ece"] is not None


def test_unknown_truth_is_left_out_of_that_finding_only():
    Yf = np.array([[1, 1], [1, np.nan], [0, 0], [0, 1]], dtype=float)
    P = np.array([[0.9, 0.9], [0.8, 0.1], [0.2, 0.2], [0.1, 0.8]])
    out = LM.live_performance(Yf, P, ["A", "B"], [0.5, 0.5], min_cases=1, n_boot=0)
    assert out["labels"]["A"]["n"] == 4 and out["labels"]["B"]["n"] == 3
    assert out["labels"]["A"]["auroc"] == 1.0 and out["labels"]["B"]["auroc"] == 1.0


def test_wilson_stays_inside_zero_one_at_the_extremes():
    lo, hi = LM.wilson_interval(0, 10)
    assert lo == 0.0 and 0.2 < hi < 0.35
    lo, hi = LM.wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and 0.65 < lo < 0.8
    assert LM.wilson_interval(0, 0) is None
