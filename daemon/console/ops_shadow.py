"""The shadow candidate as the model page shows it: which version, since when, chosen by whom or what,
and its live comparison with the current model.

The pointer (`cxrmodel.shadow_pointer`, read without torch) says which version and its origin
(`admin` for `cxrd model shadow`, `console:NAME` for the console, `retrain:<run>` for scheduled
retraining); the audit trail's newest `model.shadow` row for that version says who asked, from
where and when. The comparison is `daemon.stages.shadow.comparison_with_current`, the very one
`cxrd model report` prints and a promotion is judged on (same resamples, same seed, so the same
verdict). It is a paired bootstrap over every live labeled study both models scored (about two
seconds at 2,000 studies), too slow to repeat on every view of a busy page while new images and
report labels arrive all the time, so this process keeps it for `CACHE_S` seconds per (candidate,
current model) pair and the page says when it was computed; choosing another shadow or another
current model computes it afresh. A promotion never uses this copy: it computes its own.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select

from daemon.runtime import Runtime

CACHE_S = 300.0
_cache: dict[tuple[Any, ...], tuple[float, Any]] = {}
_lock = threading.Lock()


@dataclass
class ShadowView:
    version: str | None
    origin: str = ""
    since: str = ""
    error: str = ""
    chosen_by: str = ""        # the audit row's actor
    chosen_from: str = ""      # its host (the console's client address, or the machine)
    chosen_at: str = ""
    scored: int = 0            # live images the candidate scored in shadow (all time)
    comparison: Any = None     # cxrmodel.shadow_compare.Comparison, or None (never ran in shadow)
    computed_at: str = ""      # when the comparison shown was computed (ISO, UTC)


def view(rt: Runtime) -> ShadowView:
    from cxrmodel.errors import ModelError
    from cxrmodel.shadow_pointer import read_shadow
    from storage import db
    from storage.errors import DatabaseUnavailable
    from storage.models import AuditEvent, ShadowPrediction
    try:
        pointer = read_shadow(rt.models_dir)
    except ModelError as exc:
        return ShadowView(None, error=str(exc))
    out = ShadowView(pointer["version"], pointer["origin"], pointer["since"])
    if not out.version:
        return out
    try:
        with db.reachable(rt.engine), rt.read_sessions() as s:
            for actor, host, at, details in s.execute(
                    select(AuditEvent.actor, AuditEvent.host, AuditEvent.occurred_at, AuditEvent.details)
                    .where(AuditEvent.event_type == "model.shadow").order_by(AuditEvent.seq.desc()).limit(20)):
                try:
                    named = json.loads(details or "{}").get("version")
                except (ValueError, AttributeError):
                    continue
                if named == out.version:
                    out.chosen_by, out.chosen_from, out.chosen_at = actor, host, str(at)
                    break
            out.scored = int(s.scalar(select(func.count()).select_from(ShadowPrediction)
                                      .where(ShadowPrediction.model_version == out.version)) or 0)
    except DatabaseUnavailable as exc:
        out.error = str(exc)
        return out
    from daemon.console.ops_models import current_version
    key = (str(rt.models_dir), out.version, current_version(rt.models_dir))
    out.comparison, at = comparison(rt, out.version, key)
    out.computed_at = datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")
    return out


def comparison(rt: Runtime, version: str, key: tuple[Any, ...]) -> tuple[Any, float]:
    """(`comparison_with_current(rt, version)`, when it was computed), kept `CACHE_S` seconds per `key`."""
    from daemon.stages.shadow import comparison_with_current
    now = time.time()
    with _lock:
        hit = _cache.get(key)
        if hit is not None and 0 <= now - hit[0] < CACHE_S:
            return hit[1], hit[0]
    result = comparison_with_current(rt, version)
    with _lock:
        _cache.clear()  # one shadow at a time: the previous entry is never asked for again
        _cache[key] = (now, result)
    return result, now
