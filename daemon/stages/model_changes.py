"""Promote a model version or roll back to the one before: the one code path `cxrd model promote|rollback`
and the console's model page share.

A promotion loads the version first (its weights' sha256 is verified, so a corrupted or swapped file
is never made current), judges its evidence against the promotion floor (`cxrmodel.promotion`,
`[model.promotion]`), and either makes it current (`model.promoted`) or refuses (`model.rejected`,
outcome 4) unless forced; a forced promotion's record names what it overrode. A rollback is never
judged: it is the way out of a bad model. Both are audited with the actor who asked (the OS user
for the command line, `console:NAME` for the console), the host (this machine's name, or the
console's client address) and any details the caller adds, in the same words whichever way they
were asked for.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.errors import DaemonError
from daemon.runtime import Runtime

if TYPE_CHECKING:
    from cxrmodel.promotion import Floor, Verdict
    from cxrmodel.registry import LoadedModel


class PromotionRefused(DaemonError):
    """The evidence does not clear the floor and the promotion was not forced (already audited)."""

    def __init__(self, version: str, verdict: Verdict):
        super().__init__(f"{version} not promoted: {verdict.summary}")
        self.version = version
        self.verdict = verdict


@dataclass(frozen=True)
class Promoted:
    version: str
    previous: str | None
    verdict: Verdict


def floor(rt: Runtime) -> Floor:
    from cxrmodel.promotion import Floor
    return Floor.of(rt.settings.model.promotion)


def promote(rt: Runtime, version: str, *, force: bool = False,
            evaluate: Callable[[LoadedModel], dict[str, Any]] | None = None,
            actor: str | None = None, host: str | None = None, **details: Any) -> Promoted:
    """Make `version` current if its evidence clears the floor (or `force`); PromotionRefused if not.

    `evaluate`, when given, supplies fresh metrics for the loaded model (`--evaluate-on`); otherwise
    the evaluation recorded in its manifest is judged.
    """
    from cxrmodel.promotion import judge

    reg = rt.registry
    loaded = reg.load(version)  # refuse to promote a version whose weights fail verification
    metrics = evaluate(loaded) if evaluate is not None else dict(loaded.manifest.metrics)
    limit = floor(rt)
    verdict = judge(metrics, limit)
    if not verdict.passed and not force:
        rt.audit("model.rejected", outcome=4, actor=actor, host=host, version=version, refused=list(verdict.failures),
                 promotion=verdict.audit_details(limit), **details)
        raise PromotionRefused(version, verdict)
    previous = reg.promote(version)
    rt.audit("model.promoted", actor=actor, host=host, version=version, previous=previous, forced=not verdict.passed,
             overridden=list(verdict.failures) or None, promotion=verdict.audit_details(limit), **details)
    return Promoted(version, previous, verdict)


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
