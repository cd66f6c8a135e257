"""The shadow comparison's statistics on hand-built cases whose answers are known."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cxrmodel import metrics as M
from cxrmodel import shadow_compare as S
from cxrmodel.labels import LABELS

L = len(LABELS)


def case(truth_col: list[float], cur_col: list[float], cand_col: list[float], k: int = 2):
    """Finding k carries the given columns; every other finding is unknown (NaN) for every image."""
    n = len(truth_col)
    Y = np.full((n, L), np.nan)
    Pc, Ps = np.full((n, L), 0.5), np.full((n, L), 0.5)
    Y[:, k], Pc[:, k], Ps[:, k] = truth_col, cur_col, cand_col
    return Y, Pc, Ps


def test_point_aurocs_match_a_hand_count_and_unknown_truth_is_left_out():
    # truth 1,1,0,0: current ranks 0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1 -> 3/4; candidate separates all -> 1
    Y, Pc, Ps = case([1, 1, 0, 0, np.nan], [0.9, 0.4, 0.5, 0.1, 0.0], [0.9, 0.8, 0.5, 0.1, 1.0])
    c = S.compare(Y, Pc, Ps, ["a", "b", "c", "d", "e"], min_positives=1, n_boot=50)
    eff = c.labels[2]
    assert eff.label == "Effusion" and eff.images == 4 and eff.positives == 2 and eff.judged
    assert eff.current_auroc == pytest.approx(0.75) and eff.candidate_auroc == pytest.approx(1.0)
    assert eff.difference == pytest.approx(0.25)
    assert c.judged == ("Effusion",) and c.mean_difference == pytest.approx(0.25)
    assert all(lab.current_auroc is None and not lab.judged for i, lab in enumerate(c.labels) if i != 2)
    assert c.images == 5 and c.studies == 5


def test_a_candidate_that_ranks_backwards_is_clearly_worse():
    rng = np.random.default_rng(1)
    truth = [1.0] * 20 + [0.0] * 20
    good = list(np.r_[rng.uniform(0.6, 1.0, 20), rng.uniform(0.0, 0.4, 20)])
    Y, Pc, Ps = case(truth, good, [1 - g for g in good])
    c = S.compare(Y, Pc, Ps, [f"s{i}" for i in range(40)], min_positives=10, n_boot=300,
                  current_version="cur", candidate_version="cand")
    assert c.verdict == S.WORSE and c.clearly_worse
    assert c.mean_difference == pytest.approx(-1.0) and c.mean_difference_ci95[1] < 0
    assert "worse" in c.summary and "40 live labeled studies" in c.summary and "fewest positives 20" in c.summary
    text = "\n".join(c.lines())
    assert "candidate cand vs current cur" in text and "Effusion" in text and "-1.000" in text
    json.dumps(c.to_dict())  # plain JSON: no NaN, no numpy types


def test_the_same_scores_are_no_difference_and_a_better_candidate_is_better():
    rng = np.random.default_rng(2)
    truth = [1.0] * 30 + [0.0] * 30
    noisy = list(np.r_[rng.uniform(0.3, 1.0, 30), rng.uniform(0.0, 0.7, 30)])
    studies = [f"s{i}" for i in range(60)]
    same = S.compare(*case(truth, noisy, noisy), studies, min_positives=10, n_boot=200)
    assert same.verdict == S.NO_DIFFERENCE and not same.clearly_worse
    assert same.mean_difference == 0.0 and same.mean_difference_ci95 == (0.0, 0.0)
    perfect = list(np.r_[np.full(30, 0.9), np.full(30, 0.1)])
    better = S.compare(*case(truth, noisy, perfect), studies, min_positives=10, n_boot=200)
    assert better.verdict == S.BETTER and better.mean_difference_ci95[0] > 0


def test_pairing_makes_the_difference_interval_narrower_than_either_models_own():
    """Both models err on the same hard images: each AUROC is uncertain, their difference is not."""
    rng = np.random.default_rng(3)
    truth = np.r_[np.ones(40), np.zeros(40)]
    base = np.r_[rng.uniform(0.2, 1.0, 40), rng.uniform(0.0, 0.8, 40)]
    cand = base + rng.normal(0, 0.01, 80)
    c = S.compare(*case(list(truth), list(base), list(cand)), [f"s{i}" for i in range(80)], min_positives=10,
                  n_boot=300)
    eff = c.labels[2]
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(eff.difference_ci95) < width(eff.current_ci95) / 3
    assert width(eff.difference_ci95) < width(eff.candidate_ci95) / 3


def test_studies_are_resampled_whole():
    """Ten images of one study are one unit: the study count is what the summary reports."""
    Y, Pc, Ps = case([1, 0] * 10, [0.9, 0.1] * 10, [0.8, 0.2] * 10)
    studies = [f"study{i // 10}" for i in range(20)]
    c = S.compare(Y, Pc, Ps, studies, min_positives=5, n_boot=50)
    assert c.images == 20 and c.studies == 2 and "2 live labeled studies (20 images)" in c.summary


def test_too_few_positives_is_insufficient_never_a_verdict():
    Y, Pc, Ps = case([1, 1, 0, 0, 0, 0], [0.9, 0.8, 0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.9, 0.8, 0.7, 0.6])
    c = S.compare(Y, Pc, Ps, list("abcdef"), min_positives=10, n_boot=50)
    assert c.verdict == S.INSUFFICIENT and not c.clearly_worse and c.mean_difference is None
    assert "min_positives" in c.summary
    none = S.empty("cand", "cur", 10, "no paired labeled studies yet")
    assert none.verdict == S.INSUFFICIENT and none.images == 0 and len(none.lines()) == 2


def test_truth_matrix_reads_one_zero_and_unknown():
    m = S.truth_matrix([{"Effusion": 1, "Mass": 0, "Hernia": None}, {}])
    assert m[0, LABELS.index("Effusion")] == 1 and m[0, LABELS.index("Mass")] == 0
    assert math.isnan(m[0, LABELS.index("Hernia")]) and np.isnan(m[1]).all()


def test_mismatched_inputs_are_refused():
    Y, Pc, Ps = case([1, 0], [0.9, 0.1], [0.9, 0.1])
    with pytest.raises(ValueError):
        S.compare(Y, Pc, Ps, ["only-one"])


def test_a_resamples_weighted_auroc_is_the_auroc_of_the_resampled_images():
    """The bootstrap scores a draw by multiplicities; that must equal scoring the drawn images (ties too)."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 50).astype(float)
    s = np.round(rng.random(50), 1)  # many ties
    drawn = rng.integers(0, 50, 50)
    weights = np.bincount(drawn, minlength=50).astype(float)[None, :]
    assert S._boot_aucs(y, s, weights)[0] == pytest.approx(M.roc_auc(y[drawn], s[drawn]))
    assert S._boot_aucs(y, s, np.ones((1, 50)))[0] == pytest.approx(M.roc_auc(y, s))
    assert np.isnan(S._boot_aucs(y, s, (y == 1).astype(float)[None, :])[0])  # a draw of positives only
