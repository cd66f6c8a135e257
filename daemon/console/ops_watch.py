"""What the model watch page shows: the monitoring job's last pass, read back, never recomputed.

The scheduled monitoring job (`daemon.stages.monitoring`, every `monitor.interval_minutes` on the
scheduler leader) writes its gauges, with each alarm's start, and a JSON summary of the pass to
`monitor_state`, in one transaction. A page view reads those rows (two small indexed reads by
primary key order), so it costs the same whatever the traffic, and it shows exactly what /metrics
and the audit trail were told: PSI, verdicts and alarms are the job's, not a second opinion
computed here. What the page cannot show without a pass (before the first one, or with
monitoring off) it says, and points to `cxrd monitor report`.

Finding, characteristic, equipment and version names and numbers only: nothing here reads an
image, a UID or a report.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from cxrmodel import drift as D
from cxrmodel.labels import LABELS
from daemon.runtime import Runtime

PERCENTILES = list(range(0, 101, 5))  # the summary keeps every 5th percentile of a distribution


@dataclass
class Alarm:
    on: bool
    since: datetime | None = None
    updated: datetime | None = None


@dataclass
class Watch:
    model: str | None
    enabled: bool
    interval_minutes: int
    summary: dict[str, Any] | None = None
    summary_at: datetime | None = None
    drift_alarm: Alarm | None = None
    performance_alarms: dict[str, Alarm] = field(default_factory=dict)
    psi: dict[str, tuple[float | None, bool, datetime | None]] = field(default_factory=dict)
    input_psi: dict[str, tuple[float | None, bool, datetime | None]] = field(default_factory=dict)
    db_error: str = ""

    @property
    def stale(self) -> bool:
        """The last pass is older than two intervals (the job is not running, or failing)."""
        if self.summary_at is None:
            return False
        age = datetime.now(timezone.utc) - self.summary_at
        return age > timedelta(minutes=2 * self.interval_minutes + 5)

    @property
    def for_other_model(self) -> bool:
        """The last pass watched another model than the current one (it changed since)."""
        return bool(self.summary and self.summary.get("model") and self.summary.get("model") != self.model)

    @property
    def drift(self) -> dict[str, Any]:
        d = (self.summary or {}).get("drift")
        return d if isinstance(d, dict) else {}

    def performance(self) -> list[tuple[str, dict[str, Any]]]:
        """(version, its live performance) with the current model first."""
        perf = (self.summary or {}).get("performance")
        if not isinstance(perf, dict):
            return []
        return sorted(((v, p) for v, p in perf.items() if isinstance(p, dict)),
                      key=lambda vp: (vp[0] != self.model, vp[0]))


def band(psi: float | None) -> str:
    """The PSI's band on the usual credit-scoring scale the job uses (`cxrmodel.drift`); the
    verdict, which also weighs sampling noise and KS, is shown beside it."""
    if psi is None:
        return "–"
    if psi > D.PSI_DRIFT:
        return "drift range"
    if psi >= D.PSI_MODERATE:
        return "moderate"
    return "stable"


def collect(rt: Runtime) -> Watch:
    from daemon.console.ops_models import current_version
    from storage import db
    from storage import monitoring as SM
    from storage.errors import DatabaseUnavailable
    m = rt.settings.monitor
    w = Watch(model=current_version(rt.models_dir), enabled=bool(m.enabled), interval_minutes=int(m.interval_minutes))
    try:
        with db.reachable(rt.engine), rt.read_sessions() as s:
            w.summary, w.summary_at = SM.last_summary(s)
            states = SM.alarm_states(s)
    except DatabaseUnavailable as exc:
        w.db_error = str(exc)
        return w
    for metric, labels, value, alarm, since, updated in states:
        model = labels.get("model")
        if metric == "cxrd_drift_alarm" and model == w.model:
            w.drift_alarm = Alarm(alarm, since, updated)
        elif metric == "cxrd_performance_alarm" and model:
            w.performance_alarms[model] = Alarm(alarm, since, updated)
        elif metric == "cxrd_drift_psi" and model == w.model:
            w.psi[labels.get("label", "")] = (value, alarm, since)
        elif metric == "cxrd_input_drift" and model == w.model:
            w.input_psi[labels.get("characteristic", "")] = (value, alarm, since)
    return w


def default_finding(w: Watch) -> str:
    """The finding whose score distribution the page draws when none is asked for: the one with the
    highest PSI (the most moved), else the first."""
    scored = [(psi, label) for label, (psi, _a, _s) in w.psi.items() if psi is not None and label in LABELS]
    return max(scored)[1] if scored else LABELS[0]


def distribution(w: Watch, finding: str) -> tuple[list[float] | None, list[float] | None]:
    """(reference, live) score at every 5th percentile of `finding`, as the last pass saw them."""
    c = (w.drift.get("labels") or {}).get(finding)
    if not isinstance(c, Mapping):
        return None, None
    return _points(c.get("reference_quantiles")), _points(c.get("live_quantiles"))


def _points(q: Any) -> list[float] | None:
    if isinstance(q, list) and len(q) == len(PERCENTILES) and all(isinstance(v, (int, float)) for v in q):
        return [float(v) for v in q]
    return None
