"""What monitoring reads and writes: predictions and input profiles over a time range, ground truth,
and the latest gauge values with their alarm state (`monitor_state`).

Only pseudonymous row ids, scores and equipment/geometry attributes are returned; nothing here
reads a UID, a name or a date of the patient.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from storage.models import InputProfile, MonitorState, Prediction, utcnow

PROFILE_FIELDS = tuple(c.name for c in InputProfile.__table__.columns
                       if c.name not in ("instance_id", "model_version", "measured_at"))


@dataclass
class Scores:
    """One model version's predictions: one row per instance, columns in the caller's label order."""
    version: str
    instance_ids: list[int] = field(default_factory=list)
    created_at: list[datetime] = field(default_factory=list)
    P: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    thresholds: list[float] = field(default_factory=list)


def _scores(rows: list[Any], version: str, labels: Sequence[str]) -> Scores:
    """Instances with a score for every one of `labels`, oldest prediction first."""
    by_instance: dict[int, dict[str, float]] = {}
    created: dict[int, datetime] = {}
    thresholds: dict[str, float] = {}
    for iid, label, prob, thr, at in rows:
        by_instance.setdefault(iid, {})[label] = prob
        created[iid] = min(created.get(iid, at), at)
        thresholds[label] = thr
    ids = [i for i in sorted(by_instance, key=lambda i: (created[i], i)) if all(lab in by_instance[i] for lab in labels)]
    P = np.array([[by_instance[i][lab] for lab in labels] for i in ids], dtype=np.float64).reshape(-1, len(labels))
    return Scores(version, ids, [created[i] for i in ids], P, [float(thresholds.get(lab, 0.5)) for lab in labels])


_PRED_COLS = (Prediction.instance_id, Prediction.label, Prediction.probability, Prediction.threshold,
              Prediction.created_at)


def versions_between(session: Session, since: datetime, until: datetime) -> list[str]:
    """Model versions with predictions made in [since, until), most predictions first."""
    rows = session.execute(select(Prediction.model_version, func.count()).where(
        Prediction.created_at >= since, Prediction.created_at < until).group_by(Prediction.model_version)).all()
    return [v for v, _ in sorted(rows, key=lambda r: (-r[1], r[0]))]


def scores_between(session: Session, version: str, labels: Sequence[str], since: datetime,
                   until: datetime) -> Scores:
    """The version's predictions made in [since, until)."""
    rows = session.execute(select(*_PRED_COLS).where(Prediction.model_version == version,
                                                     Prediction.created_at >= since,
                                                     Prediction.created_at < until)).all()
    return _scores(rows, version, labels)


def first_scores(session: Session, version: str, labels: Sequence[str], n: int) -> Scores:
    """The version's first `n` predicted instances (its live baseline when it has no validation reference)."""
    first = (select(Prediction.instance_id).where(Prediction.model_version == version)
             .group_by(Prediction.instance_id).order_by(func.min(Prediction.created_at), Prediction.instance_id)
             .limit(n)).subquery()
    rows = session.execute(select(*_PRED_COLS).where(Prediction.model_version == version,
                                                     Prediction.instance_id.in_(select(first)))).all()
    return _scores(rows, version, labels)


def profiles_of(session: Session, instance_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Input profiles of these instances (those that have one)."""
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(instance_ids), 500):
        chunk = instance_ids[start:start + 500]
        for row in session.execute(select(InputProfile).where(InputProfile.instance_id.in_(chunk))).scalars():
            out[row.instance_id] = {k: getattr(row, k) for k in PROFILE_FIELDS}
    return out


# ------------------------------------------------------------------ gauges and alarms

def state_key(metric: str, labels: Mapping[str, str]) -> str:
    return (metric + "{" + ",".join(f"{k}={labels[k]}" for k in sorted(labels)) + "}")[:200]


def set_gauge(session: Session, metric: str, labels: Mapping[str, str], value: float | None,
              alarm: bool = False, now: datetime | None = None) -> str:
    """Store a gauge's latest value and alarm; returns "raised", "cleared" or "" (no change of alarm)."""
    now = now or utcnow()
    key = state_key(metric, labels)
    row = session.get(MonitorState, key)
    if row is None:
        session.execute(insert(MonitorState.__table__).values(
            key=key, metric=metric, labels=json.dumps(dict(labels), sort_keys=True), value=value, alarm=alarm,
            alarm_since=now if alarm else None, updated_at=now))
        return "raised" if alarm else ""
    change = "raised" if alarm and not row.alarm else "cleared" if row.alarm and not alarm else ""
    session.execute(update(MonitorState).where(MonitorState.key == key).values(
        value=value, alarm=alarm, updated_at=now,
        alarm_since=(now if change == "raised" else row.alarm_since if alarm else None)))
    return change


def gauges(session: Session) -> list[tuple[str, dict[str, str], float | None, bool]]:
    """Every stored gauge: (metric, labels, value, alarm); the last pass's summary is not a gauge."""
    return [row[:4] for row in alarm_states(session)]


# The last monitoring pass's numbers, for pages that must not recompute them (the console's model
# watch): one row of `monitor_state` whose `labels` column holds the JSON summary (never a gauge:
# `gauges` leaves it out, so /metrics never exports it). Written by the same pass, in the same
# transaction, as the gauges; statistics, finding and equipment names only, nothing identifying.
SUMMARY_METRIC = "cxrd_monitor_summary"
SUMMARY_KEY = "monitor.last_run"
MAX_SUMMARY_BYTES = 2 * 1024 * 1024


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None (the summary must stay valid JSON)."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _finite(value.item())
    return value


def set_summary(session: Session, summary: Mapping[str, Any], now: datetime) -> None:
    """Store the last pass's summary (replacing the one before); too large a summary is not stored."""
    text = json.dumps(_finite(summary), sort_keys=True, default=str)
    if len(text) > MAX_SUMMARY_BYTES:
        text = json.dumps({"error": f"summary larger than {MAX_SUMMARY_BYTES} bytes: not stored",
                           "model": summary.get("model")})
    values = {"metric": SUMMARY_METRIC, "labels": text, "value": None, "alarm": False, "alarm_since": None,
              "updated_at": now}
    if session.get(MonitorState, SUMMARY_KEY) is None:
        session.execute(insert(MonitorState.__table__).values(key=SUMMARY_KEY, **values))
    else:
        session.execute(update(MonitorState).where(MonitorState.key == SUMMARY_KEY).values(**values))


def last_summary(session: Session) -> tuple[dict[str, Any] | None, datetime | None]:
    """(the last pass's summary, when it was written), or (None, None) before the first pass."""
    row = session.execute(select(MonitorState.labels, MonitorState.updated_at)
                          .where(MonitorState.key == SUMMARY_KEY)).first()
    if row is None:
        return None, None
    try:
        data = json.loads(row[0] or "{}")
    except ValueError:
        return None, row[1]
    return (data if isinstance(data, dict) else None), row[1]


def alarm_states(session: Session) -> list[tuple[str, dict[str, str], float | None, bool, datetime | None,
                                                 datetime]]:
    """Every gauge with its alarm's start and last update: (metric, labels, value, alarm, alarm_since,
    updated_at); the page says since when an alarm has lasted."""
    rows = session.execute(select(MonitorState.metric, MonitorState.labels, MonitorState.value, MonitorState.alarm,
                                  MonitorState.alarm_since, MonitorState.updated_at)
                           .where(MonitorState.metric != SUMMARY_METRIC).order_by(MonitorState.key)).all()
    return [(m, json.loads(lab or "{}"), v, bool(a), since, at) for m, lab, v, a, since, at in rows]


def drop_stale(session: Session, now: datetime) -> int:
    """Remove gauges the pass at `now` did not write (a model no longer current, a version with no
    predictions left in the window), so /metrics never shows an alarm nobody evaluates any more."""
    from sqlalchemy import delete
    return session.execute(delete(MonitorState).where(MonitorState.updated_at < now)).rowcount or 0
