"""A shadow candidate against the current model on the same live, labeled studies: paired bootstrap.

Both models scored the same images (the worker runs the shadow on the current model's batch), so the
question is not "is each good?" but "is the candidate better or worse than the model it would
replace, on this hospital's traffic?". What must stay true:

* the comparison is paired: every bootstrap resample draws STUDIES with replacement (all images of a
  drawn study come along: images of one study are not independent) and scores both models on the
  very same draw, so the interval of the difference is much narrower than two separate intervals;
* a finding counts in the mean only with at least `min_positives` positive and negative known
  images (the promotion floor's rule, `cxrmodel.promotion`); an unknown truth (a finding the report
  left uncertain) leaves that image out of that finding only;
* the verdict is `worse` only when the whole 95% interval of the mean AUROC difference (candidate -
  current) lies below 0, `better` only when it lies above 0; anything else is no significant
  difference, and too few labeled studies is `insufficient`, never a pass or a fail by luck.

Few positives make these numbers noisy; the summary line always says on how many studies and
positives they rest. Values are plain floats or None (never NaN), so reports stay valid JSON.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import metrics as M
from .labels import LABELS

WORSE, BETTER, NO_DIFFERENCE, INSUFFICIENT = "worse", "better", "no significant difference", "insufficient data"
_WEIGHTS_PER_BLOCK = 4_000_000  # resample weights held at once (32 MB of float64)


@dataclass(frozen=True)
class LabelComparison:
    label: str
    images: int             # images whose truth for this finding is known
    positives: int
    judged: bool            # enough positives and negatives to count in the mean
    current_auroc: float | None
    current_ci95: tuple[float, float] | None
    candidate_auroc: float | None
    candidate_ci95: tuple[float, float] | None
    difference: float | None            # candidate - current
    difference_ci95: tuple[float, float] | None


@dataclass(frozen=True)
class Comparison:
    candidate: str
    current: str
    images: int
    studies: int
    min_positives: int
    n_boot: int
    labels: tuple[LabelComparison, ...]
    judged: tuple[str, ...]
    current_mean_auroc: float | None
    candidate_mean_auroc: float | None
    mean_difference: float | None
    mean_difference_ci95: tuple[float, float] | None
    verdict: str
    summary: str

    @property
    def clearly_worse(self) -> bool:
        """The candidate is significantly worse on live data: the whole CI of the mean difference < 0."""
        return self.verdict == WORSE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = [asdict(lab) for lab in self.labels]
        return d

    def lines(self) -> list[str]:
        """The report block for a person: the verdict line, then one line per finding."""
        out = [f"Live shadow comparison: candidate {self.candidate} vs current {self.current}",
               f"  {self.summary}"]
        if not self.images:
            return out
        out.append(f"  {'finding':<19}{'pos':>5}  {'current AUROC (95% CI)':<24}{'candidate AUROC (95% CI)':<26}"
                   f"difference (95% CI)")
        for lab in self.labels:
            mark = "" if lab.judged else "  (not judged: too few positives/negatives)"
            out.append(f"  {lab.label:<19}{lab.positives:>5}  {_auc(lab.current_auroc, lab.current_ci95):<24}"
                       f"{_auc(lab.candidate_auroc, lab.candidate_ci95):<26}"
                       f"{_diff(lab.difference, lab.difference_ci95)}{mark}")
        if self.judged:
            out.append(f"  {'mean (judged)':<19}{'':>5}  {_auc(self.current_mean_auroc, None):<24}"
                       f"{_auc(self.candidate_mean_auroc, None):<26}"
                       f"{_diff(self.mean_difference, self.mean_difference_ci95)}")
        return out


def _auc(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def _diff(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" + (f" ({ci[0]:+.3f} to {ci[1]:+.3f})" if ci else "")


def _interval(values: list[float], alpha: float) -> tuple[float, float] | None:
    if not values:
        return None
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _boot_aucs(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one finding under each row of `weights` (B, n): how many times each image was drawn.

    The Mann-Whitney count with multiplicities, on scores sorted once: per distinct score, the drawn
    positive and negative weight; a positive beats every negative below it and ties count one half
    (what `metrics.roc_auc` counts). NaN where a draw has no positive or no negative.
    """
    order = np.argsort(scores, kind="mergesort")
    s_sorted, pos = scores[order], y[order].astype(np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    w = weights[:, order]
    wp = w * pos
    wn = w - wp
    if len(starts) < len(s_sorted):  # tied scores: one bucket per distinct score
        wp, wn = np.add.reduceat(wp, starts, axis=1), np.add.reduceat(wn, starts, axis=1)
    below = np.cumsum(wn, axis=1)
    below -= 0.5 * wn  # negatives strictly below, plus half of the tied ones
    total_p, total_n = wp.sum(axis=1), wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.einsum("ij,ij->i", wp, below) / (total_p * total_n)
    auc[(total_p == 0) | (total_n == 0)] = np.nan
    return auc


def compare(truth: np.ndarray, current: np.ndarray, candidate: np.ndarray, studies: Sequence[str], *,
            labels: Sequence[str] = LABELS, min_positives: int = 10, n_boot: int = 1000, alpha: float = 0.05,
            seed: int = 0, current_version: str = "", candidate_version: str = "") -> Comparison:
    """Compare two models' scores on the same images.

    `truth` is (N, L) with 1, 0 or NaN (unknown); `current` and `candidate` are (N, L) probabilities
    in `labels` order; `studies[i]` names the study of image i (the resampling unit).
    """
    Y = np.asarray(truth, dtype=np.float64).reshape(-1, len(labels))
    Pc = np.asarray(current, dtype=np.float64).reshape(-1, len(labels))
    Ps = np.asarray(candidate, dtype=np.float64).reshape(-1, len(labels))
    if not (Y.shape == Pc.shape == Ps.shape) or len(studies) != Y.shape[0]:
        raise ValueError("truth, scores and studies differ in length")
    n = Y.shape[0]
    known = ~np.isnan(Y)
    pos = [int(np.nansum(Y[:, k])) for k in range(len(labels))]
    neg = [int(known[:, k].sum()) - pos[k] for k in range(len(labels))]
    judged = [k for k in range(len(labels)) if min(pos[k], neg[k]) >= min_positives]
    point_c = [M.roc_auc(Y[known[:, k], k], Pc[known[:, k], k]) if known[:, k].any() else None
               for k in range(len(labels))]
    point_s = [M.roc_auc(Y[known[:, k], k], Ps[known[:, k], k]) if known[:, k].any() else None
               for k in range(len(labels))]

    # Resample studies: each draw gives every image a weight (how often its study was drawn), and
    # every statistic of one draw uses the same weights (paired).
    study_ids = {s: i for i, s in enumerate(dict.fromkeys(studies))}
    group = np.array([study_ids[s] for s in studies], dtype=np.int64)
    rng = np.random.default_rng(seed)
    boots = n_boot if n else 0
    boot_c = np.full((boots, len(labels)), np.nan)
    boot_s = np.full((boots, len(labels)), np.nan)
    block = max(1, _WEIGHTS_PER_BLOCK // max(n, 1))  # bounded memory however many studies
    for first in range(0, boots, block):
        b = min(block, boots - first)
        drawn = rng.integers(0, len(study_ids), (b, len(study_ids)))
        counts = np.zeros((b, len(study_ids)))
        np.add.at(counts, (np.repeat(np.arange(b), len(study_ids)), drawn.ravel()), 1.0)
        weights = counts[:, group]
        for k in range(len(labels)):
            m = known[:, k]
            if m.any():
                wk = weights if m.all() else weights[:, m]
                boot_c[first:first + b, k] = _boot_aucs(Y[m, k], Pc[m, k], wk)
                boot_s[first:first + b, k] = _boot_aucs(Y[m, k], Ps[m, k], wk)
    boot_d = boot_s - boot_c
    judged_d = boot_d[:, judged]
    defined = ~np.isnan(judged_d)
    has = defined.any(axis=1) if judged else np.zeros(boots, dtype=bool)
    boot_mean_d = [float(np.nanmean(row)) for row in judged_d[has]]

    def col(a: np.ndarray, k: int) -> list[float]:
        v = a[:, k]
        return [float(x) for x in v[~np.isnan(v)]]

    per_label = []
    for k, label in enumerate(labels):
        c, s = point_c[k], point_s[k]
        per_label.append(LabelComparison(
            label, int(known[:, k].sum()), pos[k], k in judged, c, _interval(col(boot_c, k), alpha), s,
            _interval(col(boot_s, k), alpha), None if c is None or s is None else s - c,
            _interval(col(boot_d, k), alpha)))
    mean_c = M.mean_defined([point_c[k] for k in judged])
    mean_s = M.mean_defined([point_s[k] for k in judged])
    mean_d = None if mean_c is None or mean_s is None else mean_s - mean_c
    mean_ci = _interval(boot_mean_d, alpha) if judged else None
    where = f"{len(study_ids)} live labeled studies ({n} images)"
    if not judged or mean_d is None or mean_ci is None:
        verdict = INSUFFICIENT
        summary = (f"{INSUFFICIENT}: {where}; no finding has {min_positives} positive and {min_positives} "
                   f"negative labeled images yet (model.promotion.min_positives)")
    else:
        if mean_ci[1] < 0:
            verdict = WORSE
        elif mean_ci[0] > 0:
            verdict = BETTER
        else:
            verdict = NO_DIFFERENCE
        summary = (f"{verdict}: mean AUROC {mean_s:.3f} vs {mean_c:.3f}, difference {mean_d:+.3f} "
                   f"(95% CI {mean_ci[0]:+.3f} to {mean_ci[1]:+.3f}) over {len(judged)} findings, {where}; "
                   f"fewest positives {min(pos[k] for k in judged)}")
    return Comparison(candidate_version, current_version, n, len(study_ids), min_positives, n_boot, tuple(per_label),
                      tuple(labels[k] for k in judged), mean_c, mean_s, mean_d, mean_ci, verdict, summary)


def empty(candidate_version: str, current_version: str, min_positives: int, why: str) -> Comparison:
    """No paired labeled studies at all (a shadow just chosen, or no ground truth yet)."""
    return Comparison(candidate_version, current_version, 0, 0, min_positives, 0, (), (), None, None, None, None,
                      INSUFFICIENT, f"{INSUFFICIENT}: {why}")


def truth_matrix(rows: Sequence[Mapping[str, int | None]], labels: Sequence[str] = LABELS) -> np.ndarray:
    """(N, L) float matrix from ground-truth dicts {finding: 1 | 0 | None}; None and absent -> NaN."""
    out = np.full((len(rows), len(labels)), np.nan)
    for i, row in enumerate(rows):
        for k, label in enumerate(labels):
            v = row.get(label)
            if v is not None:
                out[i, k] = float(v)
    return out
