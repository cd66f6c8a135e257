"""The promotion floor on evaluation reports: chance is refused, evidence above chance passes, and every
refusal names the number and the floor it missed."""
from __future__ import annotations

import numpy as np

from cxrmodel import evaluate as E
from cxrmodel.labels import LABELS
from cxrmodel.promotion import Floor, judge

FLOOR = Floor(min_auroc_lower_bound=0.5, min_positives=10)


def _metrics(Y: np.ndarray, P: np.ndarray, n_boot: int = 300) -> dict:
    return E.manifest_metrics(E.report(Y, P, n_boot=n_boot), "test split")


def test_chance_scores_are_refused_with_the_number_and_the_floor() -> None:
    rng = np.random.default_rng(0)
    Y = (rng.random((300, 14)) < 0.2).astype(np.float32)
    verdict = judge(_metrics(Y, rng.random((300, 14))), FLOOR)
    assert not verdict.passed
    assert "lower bound" in verdict.summary and "min_auroc_lower_bound" in verdict.summary
    assert "0.500" in verdict.summary and "300 images" in verdict.summary


def test_evidence_above_chance_passes_and_names_findings_too_rare_to_judge() -> None:
    rng = np.random.default_rng(1)
    Y = (rng.random((300, 14)) < 0.2).astype(np.float32)
    Y[:, 13] = 0
    Y[:5, 13] = 1  # Hernia: 5 positives, too few to judge on its own
    P = np.clip(Y * 0.4 + rng.random((300, 14)) * 0.6, 0, 1)
    verdict = judge(_metrics(Y, P), FLOOR)
    assert verdict.passed, verdict.summary
    assert verdict.not_judged == (f"{LABELS[13]} (5 positives of 300)",)
    assert "13 of 14 findings judged" in verdict.summary
    # a stricter floor than the evidence supports refuses the same model
    lower = judge(_metrics(Y, P), FLOOR).evidence["mean_auroc_ci95"][0]
    assert not judge(_metrics(Y, P), Floor(min_auroc_lower_bound=lower + 0.01)).passed


def test_one_finding_reliably_below_chance_blocks_a_good_mean() -> None:
    rng = np.random.default_rng(2)
    Y = (rng.random((400, 14)) < 0.3).astype(np.float32)
    P = np.clip(Y * 0.6 + rng.random((400, 14)) * 0.5, 0, 1)
    P[:, 4] = 1 - P[:, 4]  # inverted on one finding
    metrics = _metrics(Y, P)
    assert metrics["mean_auroc_ci95"][0] > 0.5
    verdict = judge(metrics, FLOOR)
    assert not verdict.passed and len(verdict.failures) == 1
    assert verdict.failures[0].startswith(f"{LABELS[4]} AUROC") and "below chance" in verdict.failures[0]


def test_no_evidence_is_never_a_pass() -> None:
    assert not judge(None, FLOOR).passed
    assert "no evaluation" in judge({}, FLOOR).summary
    rng = np.random.default_rng(3)
    Y = (rng.random((300, 14)) < 0.3).astype(np.float32)
    good = np.clip(Y * 0.6 + rng.random((300, 14)) * 0.5, 0, 1)
    no_ci = _metrics(Y, good, n_boot=0)  # a point estimate alone is not evidence
    assert not judge(no_ci, FLOOR).passed and "no confidence interval" in judge(no_ci, FLOOR).summary
    few = _metrics(Y[:15], good[:15])  # no finding has 10 positives and 10 negatives
    verdict = judge(few, FLOOR)
    assert not verdict.passed and "none can be judged" in verdict.summary
    old = {k: v for k, v in _metrics(Y, good).items() if k not in ("positives", "auroc_ci95")}
    assert not judge(old, FLOOR).passed  # a manifest from before per-finding counts were recorded
