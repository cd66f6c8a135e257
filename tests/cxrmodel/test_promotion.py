"""The promotion floor on evaluation reports: chance is refused, evidence above chance passes, and every
refusal names the number and the floor it missed."""
from __future__ import annotations

import numpy as np

from cxrmodel import evaluate as E
from cxrmodel.labels import LABELS
from cxrmodel.promotion import Floor, judge, with_evidence

FLOOR = Floor(min_auroc_lower_bound=0.5, min_positives=10)


def _metrics(Y: np.ndarray, P: np.ndarray, n_boot: int = 300, floor: Floor = FLOOR) -> dict:
    return with_evidence(E.manifest_metrics(E.report(Y, P, n_boot=n_boot), "test split"), Y, P, floor,
                         n_boot=n_boot)


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
    assert "over 13 findings" in verdict.summary and verdict.evidence["judged"] == list(LABELS[:13])
    # a stricter floor than the evidence supports refuses the same model
    lower = judge(_metrics(Y, P), FLOOR).evidence["mean_auroc_ci95"][0]
    assert not judge(_metrics(Y, P), Floor(min_auroc_lower_bound=lower + 0.01)).passed


def test_one_finding_reliably_below_chance_blocks_a_good_mean() -> None:
    rng = np.random.default_rng(2)
    Y = (rng.random((400, 14)) < 0.3).astype(np.float32)
    P = np.clip(Y * 0.6 + rng.random((400, 14)) * 0.5, 0, 1)
    P[:, 4] = 1 - P[:, 4]  # inverted on one finding
    metrics = _metrics(Y, P)
    assert metrics["promotion_evidence"]["mean_auroc_ci95"][0] > 0.5
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
    old = E.manifest_metrics(E.report(Y, good, n_boot=100), "test")  # a manifest from before the floor
    assert not judge(old, FLOOR).passed and "no evaluation" in judge(old, FLOOR).summary
    other = judge(_metrics(Y, good), Floor(min_positives=20))  # recorded for another min_positives
    assert not other.passed and "evaluate it again" in other.summary


def test_rare_findings_cannot_lift_a_chance_model_over_the_floor() -> None:
    """On a few dozen images, findings with one or two positives score 0 or 1 by luck; averaged in,
    they make a chance-level model look above 0.5. They are left out of the judged mean."""
    rng = np.random.default_rng(4)
    Y = np.zeros((40, 14), dtype=np.float32)
    Y[:20, 0] = 1                      # one finding with enough positives, scored at chance
    for k in range(1, 14):             # thirteen with a single positive, scored "perfectly"
        Y[k, k] = 1
    P = rng.random((40, 14))
    for k in range(1, 14):
        P[k, k] = 1.0
    metrics = _metrics(Y, P)
    assert metrics["mean_auroc_ci95"][0] > 0.5  # what a plain mean over every finding would claim
    verdict = judge(metrics, FLOOR)
    assert not verdict.passed and verdict.evidence["judged"] == [LABELS[0]]
    assert "over 1 findings" in verdict.summary and "not above the floor" in verdict.summary
