"""Promote a model version or roll back to the one before: the one code path `cxrd model promote|rollback`
and the console's model page share.

A promotion loads the version first (its weights' sha256 is verified, so a corrupted or swapped file
is never made current), judges its evidence against the promotion floor (`cxrmodel.promotion`,
`[model.promotion]`), and either makes it current (`model.promoted`) or refuses (`model.rejected`,
outcome 4) unless forced; a forced promotion's record names what it overrode. A rollback is never
judged: it is the way out of a bad model. Both are audited with the actor who asked (the OS user
for the command line, `console:NAME` for the console), the host (this machine's name, or the
console's client address) and any details the caller adds, in the same words whichever way they
were asked for. A shadow that retraining put there is promoted by the scheduler through the same
`promote` (`settle_retrained_shadow`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.errors import DaemonError
from daemon.runtime import Runtime

_log = logging.getLogger("cxrd.shadow")

if TYPE_CHECKING:
    from cxrmodel.promotion import Floor, Verdict
    from cxrmodel.shadow_compare import Comparison
    from cxrmodel.registry import LoadedModel


class PromotionRefused(DaemonError):
    """The evidence does not clear the floor, or the version ran in shadow and is clearly worse than
    the current model on the same live labeled studies, and the promotion was not forced (already
    audited). `reason` is the line a person reads."""

    def __init__(self, version: str, verdict: Verdict, reason: str, live: Comparison | None):
        super().__init__(f"{version} not promoted: {reason}")
        self.version = version
        self.verdict = verdict
        self.reason = reason
        self.live = live


@dataclass(frozen=True)
class Promoted:
    version: str
    previous: str | None
    verdict: Verdict
    overridden: list[str]       # what a forced promotion overrode (empty when it passed)
    live: Comparison | None     # its live shadow comparison with the model it replaced, if it ran in shadow


def floor(rt: Runtime) -> Floor:
    from cxrmodel.promotion import Floor
    return Floor.of(rt.settings.model.promotion)


_COMPARE = object()  # `live` not given: compare with the current model here


def promote(rt: Runtime, version: str, *, force: bool = False,
            evaluate: Callable[[LoadedModel], dict[str, Any]] | None = None,
            actor: str | None = None, host: str | None = None, live: Any = _COMPARE, **details: Any) -> Promoted:
    """Make `version` current if its evidence clears the floor and, when it ran in shadow, it is not
    clearly worse than the current model on the same live labeled studies (or `force`);
    PromotionRefused if not.

    `evaluate`, when given, supplies fresh metrics for the loaded model (`--evaluate-on`); otherwise
    the evaluation recorded in its manifest is judged. `live`, when given, is the live comparison the
    caller already made (the scheduler decided on it), so its bootstrap is not run twice.
    """
    from cxrmodel.promotion import judge
    from daemon.stages.shadow import comparison_with_current, shadow_refusal

    reg = rt.registry
    loaded = reg.load(version)  # refuse to promote a version whose weights fail verification
    metrics = evaluate(loaded) if evaluate is not None else dict(loaded.manifest.metrics)
    limit = floor(rt)
    verdict = judge(metrics, limit)
    if live is _COMPARE:
        live = comparison_with_current(rt, version)
    live_refusal = shadow_refusal(live)
    failures = list(verdict.failures) + ([live_refusal] if live_refusal else [])
    live_details = live.to_dict() if live is not None else None
    if failures and not force:
        rt.audit("model.rejected", outcome=4, actor=actor, host=host, version=version, refused=failures,
                 promotion=verdict.audit_details(limit), live_shadow=live_details, **details)
        raise PromotionRefused(version, verdict, "; ".join(failures) if live_refusal else verdict.summary, live)
    previous = reg.promote(version)
    rt.audit("model.promoted", actor=actor, host=host, version=version, previous=previous, forced=bool(failures),
             overridden=failures or None, promotion=verdict.audit_details(limit), live_shadow=live_details,
             **details)
    return Promoted(version, previous, verdict, failures, live)


def rollback_target(rt: Runtime) -> str | None:
    """The version a rollback would return to now (read without torch), None if there is none."""
    from cxrmodel.pointer import read_pointer
    previous = [v for v in read_pointer(rt.models_dir)["previous"]
                if v and (rt.models_dir / v / "manifest.json").is_file()]
    return previous[-1] if previous else None


def rollback(rt: Runtime, *, actor: str | None = None, host: str | None = None, **details: Any) -> tuple[str, str | None]:
    """Return to the model that was current before; (now current, was current). ModelError if none."""
    reg = rt.registry
    before = reg.current()
    version = reg.rollback()
    previous = before.version if before else None
    rt.audit("model.rollback", actor=actor, host=host, version=version, previous=previous, **details)
    return version, previous


# -- shadow candidates: the one code path of `cxrd model shadow` and the console's model page ------------------
class ShadowRefused(DaemonError):
    """The version cannot run in shadow beside the current model (it is the current model, or it
    prepares images differently); nothing was changed. The message is the line a person reads."""


@dataclass(frozen=True)
class ShadowStarted:
    version: str
    previous: str | None        # the shadow it replaced, if any
    current: str | None         # the current model it runs beside


def start_shadow(rt: Runtime, version: str, *, origin: str = "admin", actor: str | None = None,
                 host: str | None = None, **details: Any) -> ShadowStarted:
    """Run `version` on live images beside the current model, sending nothing; audited as `model.shadow`.

    The weights are verified first (a version whose sha256 fails is never run), and a version that
    prepares images otherwise than the current model is refused: the shadow runs on the current
    model's preprocessed tensors. `origin` is what the shadow pointer records as the chooser."""
    reg = rt.registry
    loaded = reg.load(version)  # a version whose weights fail verification is refused here
    current = reg.current()
    if current is not None:
        if current.version == version:
            raise ShadowRefused(f"{version} is the current model: a shadow runs beside the current one")
        spec = reg.manifest(current.version).preprocessing
        if spec != loaded.manifest.preprocessing:
            raise ShadowRefused(f"{version} prepares images differently from the current model {current.version} "
                                f"({spec_text(loaded.manifest.preprocessing)} vs {spec_text(spec)}): a shadow "
                                f"runs on the current model's preprocessed images")
    previous = reg.set_shadow(version, origin)
    rt.audit("model.shadow", actor=actor, host=host, version=version, previous=previous,
             current=current.version if current else None, **details)
    return ShadowStarted(version, previous, current.version if current else None)


def stop_shadow(rt: Runtime, *, origin: str = "admin", actor: str | None = None, host: str | None = None,
                **details: Any) -> str | None:
    """Stop running a shadow candidate; returns the version that was in shadow (None: none was).
    Audited as `model.shadow.off` either way, as the command line always has."""
    previous = rt.registry.set_shadow(None, origin)
    rt.audit("model.shadow.off", actor=actor, host=host, version=previous, **details)
    return previous


def spec_text(spec: Any) -> str:
    """A preprocessing spec in a person's words (size, channels, value range, squaring)."""
    return f"{spec.size} px, {spec.channels} channel(s), range {tuple(spec.value_range)}, {spec.square}"


# -- automatic promotion of a shadow put there by retraining ----------------------------------------------------
def settle_retrained_shadow(rt: Runtime) -> dict[str, Any] | None:
    """Decide on a shadow that scheduled retraining put there (origin `retrain:<run>`).

    Promoted once `model.shadow.min_labeled_studies` live studies with ground truth were scored by both
    models and it is not significantly worse; turned off if it is significantly worse on that many;
    otherwise left running. An administrator's shadow is never decided here. Returns what was done.
    """
    from cxrmodel import shadow_compare
    from cxrmodel.errors import ModelError
    from daemon.ops.logs import event
    from daemon.stages.shadow import live_comparison, shadow_refusal
    reg = rt.registry
    pointer = reg.shadow()
    version = pointer["version"]
    if not version or not pointer["origin"].startswith("retrain:"):
        return None
    try:
        current = reg.current_version()
    except ModelError:
        current = None
    settings = rt.settings.model
    comparison = live_comparison(rt.sessions, rt.keys, version, current,
                                 min_positives=int(settings.promotion.min_positives))
    need = int(settings.shadow.min_labeled_studies)
    studies = comparison.studies if comparison else 0
    decision: dict[str, Any] = {"version": version, "current": current, "studies": studies, "needed": need,
                                "live_shadow": comparison.to_dict() if comparison else None}
    if studies < need or comparison is None or comparison.verdict == shadow_compare.INSUFFICIENT:
        decision["outcome"] = "waiting"
        event(_log, "shadow.waiting", version=version, studies=studies, needed=need)
        return decision
    try:  # the one promotion path: weights verified, the floor as it is now, audited
        promote(rt, version, live=comparison, actor="cxrd:scheduler",
                why=f"shadow from {pointer['origin']}: {comparison.summary}")
        decision["outcome"] = "promoted"
    except PromotionRefused as exc:
        refused = [r for r in (shadow_refusal(exc.live),) if r] + list(exc.verdict.failures)
        reg.set_shadow(None, "retired: " + refused[0][:150], only_if=version)
        decision["outcome"], decision["reasons"] = "retired", refused
    event(_log, f"shadow.{decision['outcome']}", version=version, why=comparison.summary)
    return decision
