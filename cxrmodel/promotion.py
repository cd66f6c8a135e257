"""The evidence floor a model must clear before it becomes current: shown better than chance.

Every path that makes a model current (training, import, scheduled retraining, `cxrd model promote`)
judges with `judge`, on the compact metrics a manifest records (`evaluate.manifest_metrics`): the
mean AUROC over held-out images with its bootstrap 95% confidence interval, and per finding its
AUROC, CI and number of positives. What must stay true:

* the lower bound of the mean AUROC's CI must be above `Floor.min_auroc_lower_bound` (0.5 = chance);
  a point estimate alone never suffices, because on a few hundred images a chance-level model
  scores anywhere in 0.45-0.55;
* a finding with enough positives and negatives to be judged must not have its whole CI below 0.5
  (a model that is reliably wrong on one finding is not made current for the other thirteen);
* at least one finding must be judged, and the findings too rare to judge are named;
* no evaluation on record, or one without confidence intervals, is a failure, never a pass.

Each failure is one line naming the number and the floor it missed, so the person told "not
promoted" can see why, and a forced promotion's audit record names exactly what it overrode.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

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


def judge(metrics: Mapping[str, Any] | None, floor: Floor) -> Verdict:
    """Judge the evaluation `metrics` (a manifest's `metrics`) against `floor`."""
    metrics = metrics or {}
    n_images = metrics.get("n_images")
    mean = metrics.get("mean_auroc")
    ci = _ci(metrics.get("mean_auroc_ci95"))
    if not isinstance(n_images, int) or not isinstance(mean, (int, float)):
        why = "no evaluation on held-out images is on record"
        return Verdict(False, (why,), summary=why)
    where = f"{metrics.get('evaluated_on') or 'evaluation data'}, {n_images} images"
    evidence: dict[str, Any] = {"mean_auroc": float(mean), "mean_auroc_ci95": list(ci) if ci else None,
                                "n_images": n_images, "evaluated_on": metrics.get("evaluated_on")}
    failures: list[str] = []
    if ci is None:
        failures.append(f"mean AUROC {mean:.3f} has no confidence interval on record ({where}): "
                        f"cannot show it is above the floor {floor.min_auroc_lower_bound:.3f} "
                        f"(model.promotion.min_auroc_lower_bound)")
    elif not ci[0] > floor.min_auroc_lower_bound:
        failures.append(f"mean AUROC {mean:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}, {where}): lower bound "
                        f"{ci[0]:.3f} is not above the floor {floor.min_auroc_lower_bound:.3f} "
                        f"(model.promotion.min_auroc_lower_bound)")
    aurocs = metrics.get("auroc") or {}
    positives = metrics.get("positives") or {}
    label_cis = metrics.get("auroc_ci95") or {}
    judged: list[str] = []
    not_judged: list[str] = []
    for label in LABELS:
        pos = positives.get(label)
        if not isinstance(pos, int):
            not_judged.append(f"{label} (count not on record)")
            continue
        if min(pos, n_images - pos) < floor.min_positives:
            not_judged.append(f"{label} ({pos} positives of {n_images})")
            continue
        judged.append(label)
        lab_ci = _ci(label_cis.get(label))
        auc = aurocs.get(label)
        if lab_ci is None:
            failures.append(f"{label} has no AUROC confidence interval on record")
        elif lab_ci[1] < CHANCE:
            failures.append(f"{label} AUROC {auc:.3f} (95% CI {lab_ci[0]:.3f}-{lab_ci[1]:.3f}) is below "
                            f"chance ({CHANCE})")
    if not judged:
        failures.append(f"no finding has {floor.min_positives} positive and {floor.min_positives} negative "
                        f"evaluation images ({where}; model.promotion.min_positives): none can be judged")
    evidence["judged"] = judged
    if failures:
        return Verdict(False, tuple(failures), tuple(not_judged), "; ".join(failures), evidence)
    summary = (f"mean AUROC {mean:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}, {where}) is above the floor "
               f"{floor.min_auroc_lower_bound:.3f}; {len(judged)} of {len(LABELS)} findings judged, none "
               f"below chance")
    if not_judged:
        summary += f"; not judged (fewer than {floor.min_positives} positives or negatives): " + \
                   ", ".join(not_judged)
    return Verdict(True, (), tuple(not_judged), summary, evidence)
