"""The evidence floor a model must clear before it becomes current: shown better than chance.

Every path that makes a model current (training, import, scheduled retraining, `cxrd model promote`)
judges with `judge`, on the metrics a manifest records: `evaluate.manifest_metrics` plus the
`promotion_evidence` that `with_evidence` computes from the held-out truth and probabilities. What
must stay true:

* the mean AUROC is taken over the findings with at least `min_positives` positive and negative
  evaluation images, and the lower bound of its bootstrap 95% CI (images resampled jointly) must be
  above `min_auroc_lower_bound` (0.5 = chance). Rarer findings are left out of it, not averaged in:
  with one or two positives a finding's AUROC is 0 or 1 by luck, and a chance-level model trained on
  shuffled labels then shows a mean AUROC "CI" of 0.55-0.76 on 29 images;
* a judged finding must not have its whole CI below 0.5 (a model reliably wrong on one finding is
  not made current for the other thirteen);
* at least one finding must be judged, and the findings too rare to judge are named;
* no evaluation on record, or one made for another `min_positives`, is a failure, never a pass.

Each failure is one line naming the number and the floor it missed, so the person told "not
promoted" can see why, and a forced promotion's audit record names exactly what it overrode.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import metrics as M
from .labels import LABELS

CHANCE = 0.5


@dataclass(frozen=True)
class Floor:
    """Settings `[model.promotion]`; the names below are those of the configuration keys."""
    min_auroc_lower_bound: float = 0.5
    min_positives: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, settings: Any) -> "Floor":
        """From any object with the two attributes (the daemon's `settings.model.promotion`)."""
        return cls(float(settings.min_auroc_lower_bound), int(settings.min_positives))


@dataclass(frozen=True)
class Verdict:
    passed: bool
    failures: tuple[str, ...] = ()      # why not, one line each (empty when passed)
    not_judged: tuple[str, ...] = ()    # "Hernia (3 positives)": too rare to judge on its own
    summary: str = ""                   # one line for a person: the evidence, or the failures
    evidence: Mapping[str, Any] = field(default_factory=dict)  # for audit records

    def audit_details(self, floor: Floor) -> dict[str, Any]:
        return {"floor": floor.to_dict(), "passed": self.passed, "failures": list(self.failures),
                "not_judged": list(self.not_judged), **self.evidence}


def _ci(value: Any) -> tuple[float, float] | None:
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return float(value[0]), float(value[1])
    return None


def with_evidence(metrics: Mapping[str, Any], Y: np.ndarray, P: np.ndarray, floor: Floor, *,
                  n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """`metrics` (from `evaluate.manifest_metrics` on the same images) plus `promotion_evidence`: the
    mean AUROC over the findings that can be judged at `floor.min_positives`, with its bootstrap CI."""
    Y = np.asarray(Y)
    n = int(Y.shape[0])
    judged = [k for k in range(len(LABELS)) if min(int(Y[:, k].sum()), n - int(Y[:, k].sum())) >= floor.min_positives]
    ci = M.bootstrap_mean_auc_ci(Y, P, judged, n_boot=n_boot, seed=seed) if n_boot else None
    mean = M.mean_defined([M.roc_auc(Y[:, k], np.asarray(P)[:, k]) for k in judged])
    return {**metrics, "promotion_evidence": {
        "min_positives": floor.min_positives, "findings": [LABELS[k] for k in judged], "mean_auroc": mean,
        "mean_auroc_ci95": list(ci) if ci else None, "n_boot": n_boot}}


def judge(metrics: Mapping[str, Any] | None, floor: Floor) -> Verdict:
    """Judge the evaluation `metrics` (a manifest's `metrics`) against `floor`."""
    metrics = metrics or {}
    n_images = metrics.get("n_images")
    recorded = metrics.get("promotion_evidence")
    if not isinstance(n_images, int) or not isinstance(recorded, Mapping):
        why = "no evaluation on held-out images is on record"
        return Verdict(False, (why,), summary=why)
    where = f"{metrics.get('evaluated_on') or 'evaluation data'}, {n_images} images"
    if recorded.get("min_positives") != floor.min_positives:
        why = (f"the evaluation on record judged findings with {recorded.get('min_positives')} positives, the "
               f"floor asks for {floor.min_positives} (model.promotion.min_positives): evaluate it again "
               f"(`--evaluate-on DATA`)")
        return Verdict(False, (why,), summary=why)
    mean = recorded.get("mean_auroc")
    ci = _ci(recorded.get("mean_auroc_ci95"))
    findings = [str(f) for f in recorded.get("findings") or []]
    evidence: dict[str, Any] = {"mean_auroc": mean, "mean_auroc_ci95": list(ci) if ci else None,
                                "n_images": n_images, "evaluated_on": metrics.get("evaluated_on"),
                                "judged": findings}
    failures: list[str] = []
    if not findings:
        failures.append(f"no finding has {floor.min_positives} positive and {floor.min_positives} negative "
                        f"evaluation images ({where}; model.promotion.min_positives): none can be judged")
    elif ci is None or not isinstance(mean, (int, float)):
        failures.append(f"the mean AUROC has no confidence interval on record ({where}): cannot show it is "
                        f"above the floor {floor.min_auroc_lower_bound:.3f} (model.promotion.min_auroc_lower_bound)")
    elif not ci[0] > floor.min_auroc_lower_bound:
        failures.append(f"mean AUROC {mean:.3f} over {len(findings)} findings (95% CI {ci[0]:.3f}-{ci[1]:.3f}, "
                        f"{where}): lower bound {ci[0]:.3f} is not above the floor "
                        f"{floor.min_auroc_lower_bound:.3f} (model.promotion.min_auroc_lower_bound)")
    aurocs = metrics.get("auroc") or {}
    positives = metrics.get("positives") or {}
    label_cis = metrics.get("auroc_ci95") or {}
    not_judged: list[str] = []
    for label in LABELS:
        if label not in findings:
            pos = positives.get(label)
            not_judged.append(f"{label} ({pos} positives of {n_images})" if isinstance(pos, int) else label)
            continue
        lab_ci = _ci(label_cis.get(label))
        auc = aurocs.get(label)
        if lab_ci is None or not isinstance(auc, (int, float)):
            failures.append(f"{label} has no AUROC confidence interval on record")
        elif lab_ci[1] < CHANCE:
            failures.append(f"{label} AUROC {auc:.3f} (95% CI {lab_ci[0]:.3f}-{lab_ci[1]:.3f}) is below "
                            f"chance ({CHANCE})")
    if failures:
        return Verdict(False, tuple(failures), tuple(not_judged), "; ".join(failures), evidence)
    summary = (f"mean AUROC {mean:.3f} over {len(findings)} findings (95% CI {ci[0]:.3f}-{ci[1]:.3f}, {where}) "
               f"is above the floor {floor.min_auroc_lower_bound:.3f}, none below chance")
    if not_judged:
        summary += f"; not judged (fewer than {floor.min_positives} positives or negatives): " + \
                   ", ".join(not_judged)
    return Verdict(True, (), tuple(not_judged), summary, evidence)
