"""What the operations dashboard shows, read from the database in a bounded number of aggregate queries.

Every number comes from one SQL aggregate over an indexed column (`instances.state`,
`instances.received_at`, `jobs(state, not_before)`, `results(state, next_attempt_at)`,
`audit_events.event_type` / `occurred_at`, `predictions.created_at`), so the page costs the same
handful of queries whether the service holds a hundred images or millions; no function here loads a
table into Python. Lists (failures, parked results) are the newest N, never everything.

Only pseudonymous UIDs, AE titles, rule texts and error texts leave this module: the same columns
`cxrd status`, `cxrd results list` and the audit trail show, never anything from `reid_map`.
Time series are bucketed by UTC hour in SQL (the per-backend expression is chosen here) and
labelled in the server's local time by the page.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Integer, case, cast, func, literal_column, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from cxrmodel.labels import LABELS
from storage.models import AuditEvent, Instance, Job, Prediction, Result
# the dashboard's counts, shared with `cxrd status`
from storage.service_counts import images_by_state, not_stored  # noqa: F401

MAX_HOURS = 168  # a week of hourly buckets at most
LATENCY_BUDGET = 5000  # images whose latency one page measures, spread over its hours
LIST_LIMIT = 25  # rows in each "newest N" list


@dataclass(frozen=True)
class HourBucket:
    start: datetime  # UTC, on the hour
    received: int = 0
    predicted: int = 0
    latency_median_s: float | None = None
    latency_p95_s: float | None = None
    latency_sampled: int = 0  # how many images the two latency figures are taken from


@dataclass
class AeCounts:
    calling_aet: str
    accepted: int = 0
    refused: int = 0
    last_at: str = ""  # ISO UTC of the newest event counted
    hosts: set[str] = field(default_factory=set)


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _hour_key(column: Any, dialect: str) -> ColumnElement:
    """'YYYY-MM-DD HH' (UTC) of a UTCDateTime column: SQLite stores them as UTC text, so the first
    13 characters; PostgreSQL has timestamptz, truncated in UTC."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24")
    return func.substr(column, 1, 13)


def _details_count(dialect: str) -> ColumnElement:
    """`count` in an `association.rejected` row's details (how many refusals the row stands for)."""
    if dialect == "postgresql":
        return func.coalesce(cast(literal_column("(audit_events.details::jsonb ->> 'count')"), Integer), 1)
    return func.coalesce(cast(func.json_extract(AuditEvent.details, "$.count"), Integer), 1)


def queue(session: Session, now: datetime) -> dict[str, Any]:
    """Jobs waiting or in inference, how many are delayed (retry back-off) and the oldest's age."""
    depth, oldest = session.execute(
        select(func.count(), func.min(Job.created_at)).where(Job.state.in_(("queued", "running")))).one()
    delayed = session.scalar(select(func.count()).select_from(Job).where(
        Job.state == "queued", Job.not_before > now))
    failed = session.scalar(select(func.count()).select_from(Job).where(Job.state == "failed"))
    age = None
    if oldest is not None:
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=timezone.utc)
        age = max((now - oldest).total_seconds(), 0.0)
    return {"depth": int(depth or 0), "delayed": int(delayed or 0), "failed_jobs": int(failed or 0),
            "oldest_age_s": age}


def hourly(session: Session, now: datetime, hours: int, latency_budget: int = LATENCY_BUDGET) -> list[HourBucket]:
    """Per UTC hour over the last `hours`: images received, images analysed, and the median and 95th
    percentile of seconds from receipt to prediction.

    Receipts are grouped in SQL on the `received_at` index. Predictions are counted per hour as index
    range counts on `predictions.created_at` divided by the labels per analysis (the worker writes
    one row per label, all with the same time), which stays cheap where grouping 14 rows per image
    would not. Latency is measured on a bounded sample: the newest images analysed in each hour, at
    most `latency_budget` in all (so 24 hours get ~200 each), which estimates the median and 95th
    percentile well while the page's cost stays fixed.
    """
    dialect = session.get_bind().dialect.name
    hours = max(1, min(int(hours), MAX_HOURS))
    first = hour_floor(now) - timedelta(hours=hours - 1)
    key = _hour_key(Instance.received_at, dialect).label("k")
    received = dict(session.execute(select(key, func.count()).where(Instance.received_at >= first)
                                    .group_by(key)).all())
    per_hour = max(10, latency_budget // hours)
    out = []
    for i in range(hours):
        start = first + timedelta(hours=i)
        end = start + timedelta(hours=1)
        rows = session.scalar(select(func.count()).select_from(Prediction).where(
            Prediction.created_at >= start, Prediction.created_at < end)) or 0
        latencies: list[float] = []
        if rows:
            sample = session.execute(
                select(Prediction.created_at, Instance.received_at).join(Instance, Instance.id == Prediction.instance_id)
                .where(Prediction.created_at >= start, Prediction.created_at < end, Prediction.label == LABELS[0])
                .order_by(Prediction.created_at.desc()).limit(per_hour)).all()
            latencies = sorted(max((_utc(p) - _utc(r)).total_seconds(), 0.0) for p, r in sample)
        out.append(HourBucket(start, int(received.get(start.strftime("%Y-%m-%d %H"), 0)), int(rows) // len(LABELS),
                              _quantile(latencies, 0.5), _quantile(latencies, 0.95), len(latencies)))
    return out


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _quantile(ordered: list[float], q: float) -> float | None:
    """The q-quantile of sorted values (nearest rank); None for none."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def recent_failures(session: Session, limit: int = LIST_LIMIT) -> list[dict[str, Any]]:
    """The newest images that failed or were quarantined, and the newest images ingest refused,
    with their reasons; pseudonymous UIDs only. Ingest's refusals have no row of their own: they are
    `instance.failed` / `instance.rejected` audit events by a peer."""
    rows = session.execute(
        select(Instance.updated_at, Instance.state, Instance.study_uid, Instance.sop_instance_uid,
               Instance.calling_aet, Instance.error)
        .where(Instance.state.in_(("failed", "quarantined"))).order_by(Instance.updated_at.desc()).limit(limit)).all()
    out = [{"at": at.isoformat(timespec="seconds"), "where": "worker" if state == "failed" else "worker (quarantined)",
            "state": state, "study_uid": study, "object_uid": sop, "calling_aet": aet, "reason": error or ""}
           for at, state, study, sop, aet, error in rows]
    events = session.execute(
        select(AuditEvent.occurred_at, AuditEvent.event_type, AuditEvent.study_uid, AuditEvent.object_uid,
               AuditEvent.actor, AuditEvent.details)
        .where(AuditEvent.event_type.in_(("instance.failed", "instance.rejected")), AuditEvent.actor.like("aet:%"))
        .order_by(AuditEvent.seq.desc()).limit(limit)).all()
    for at, event_type, study, obj, actor, details in events:
        out.append({"at": at[:19].replace("T", " ") + "+00:00" if len(at) >= 19 else at,
                    "where": "ingest (not stored)", "state": event_type.split(".")[1], "study_uid": study,
                    "object_uid": obj, "calling_aet": actor[4:], "reason": _reason(details)})
    out.sort(key=lambda r: _sortable(r["at"]), reverse=True)
    return out[:limit]


def _sortable(at: str) -> str:
    return at.replace("T", " ")[:19]


def _reason(details: str) -> str:
    """The reason an ingest event records (its `reason` or `error` field), never the whole details."""
    try:
        data = json.loads(details or "{}")
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    value = data.get("reason") or data.get("error") or data.get("rule") or ""
    return str(value)[:300]


def results_summary(session: Session, limit: int = LIST_LIMIT) -> dict[str, Any]:
    """Result objects by state, and the newest failed and pending ones (what a Retry acts on)."""
    by_state = {s: int(n) for s, n in session.execute(select(Result.state, func.count()).group_by(Result.state)).all()}
    rows = session.execute(
        select(Result.id, Result.study_uid, Result.model_version, Result.kind, Result.state, Result.attempts,
               Result.next_attempt_at, Result.last_error)
        .where(Result.state.in_(("failed", "pending", "sending")))
        .order_by(case((Result.state == "failed", 0), else_=1), Result.id.desc()).limit(limit)).all()
    listed = [{"id": i, "study_uid": st, "model_version": mv, "kind": kind, "state": state, "attempts": att,
               "next_attempt_at": nxt.isoformat(timespec="seconds") if nxt else "", "last_error": err or ""}
              for i, st, mv, kind, state, att, nxt, err in rows]
    return {"by_state": by_state, "open": listed}


def associations(session: Session, since: datetime) -> list[AeCounts]:
    """Associations accepted and refused per calling AE title since `since`.

    Accepted ones are `association.accepted` audit events (one per association, actor `aet:TITLE`,
    written by ingest before the first request is served). Refusals are `association.rejected` rows,
    each standing for `count` refusals of one (host, rule) in one interval (daemon.ops.refusal_audit);
    a row whose refusals came under several calling AE titles has no single actor and is counted
    under "(several titles)". Both are grouped in SQL.
    """
    dialect = session.get_bind().dialect.name
    first = first_seq_since(session, since)
    out: dict[str, AeCounts] = {}
    if first is None:
        return []
    for actor, host, n, last in session.execute(
            select(AuditEvent.actor, AuditEvent.host, func.count(), func.max(AuditEvent.occurred_at))
            .where(AuditEvent.event_type == "association.accepted", AuditEvent.seq >= first)
            .group_by(AuditEvent.actor, AuditEvent.host)).all():
        ae = out.setdefault(_title(actor), AeCounts(_title(actor)))
        ae.accepted += int(n)
        ae.hosts.add(host)
        ae.last_at = max(ae.last_at, last or "")
    for actor, host, n, last in session.execute(
            select(AuditEvent.actor, AuditEvent.host, func.sum(_details_count(dialect)), func.max(AuditEvent.occurred_at))
            .where(AuditEvent.event_type == "association.rejected", AuditEvent.seq >= first)
            .group_by(AuditEvent.actor, AuditEvent.host)).all():
        ae = out.setdefault(_title(actor, refused=True), AeCounts(_title(actor, refused=True)))
        ae.refused += int(n or 0)
        ae.hosts.add(host)
        ae.last_at = max(ae.last_at, last or "")
    return sorted(out.values(), key=lambda a: (-(a.accepted + a.refused), a.calling_aet))


def first_seq_since(session: Session, since: datetime) -> int | None:
    """The first audit row at or after `since` (None: none yet), found on the `occurred_at` index.

    Rows are appended in time order under the chain's lock, so "since T" is "seq >= this", and a
    filter on (event_type, seq) then reads only the period's rows of that type from an index
    (`event_type` alone on SQLite, whose indexes end in the rowid; `ix_audit_events_type_seq` on
    PostgreSQL) instead of every row of that type ever written.
    """
    moment = since.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return session.scalar(select(AuditEvent.seq).where(AuditEvent.occurred_at >= moment)
                          .order_by(AuditEvent.occurred_at).limit(1))


def _title(actor: str, refused: bool = False) -> str:
    if actor.startswith("aet:"):
        return actor[4:] or "(empty title)"
    return "(several titles)" if refused else (actor or "(unknown)")


def database_size(session: Session) -> int | None:
    """Bytes the database takes where that is cheap: PostgreSQL's own count; SQLite's pages."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return int(session.scalar(text("SELECT pg_database_size(current_database())")) or 0)
    if dialect == "sqlite":
        pages = session.scalar(text("PRAGMA page_count"))
        size = session.scalar(text("PRAGMA page_size"))
        return int(pages or 0) * int(size or 0)
    return None


def vault_size(session: Session) -> dict[str, int]:
    """Images held in the vault and their bytes, summed in SQL from the rows that name an object
    (walking the vault's files would cost a stat per image)."""
    n, total = session.execute(select(func.count(), func.coalesce(func.sum(Instance.size_bytes), 0))
                               .where(Instance.vault_object.is_not(None))).one()
    return {"objects": int(n or 0), "bytes": int(total or 0)}


def audit_head(session: Session) -> dict[str, Any]:
    seq, at = session.execute(select(AuditEvent.seq, AuditEvent.occurred_at)
                              .order_by(AuditEvent.seq.desc()).limit(1)).first() or (0, "")
    return {"rows": int(seq or 0), "last_at": at or ""}


def model_events(session: Session, limit: int = 100) -> list[dict[str, Any]]:
    """Who promoted, rolled back, refused or ran in shadow which model version, and when (newest first)."""
    rows = session.execute(
        select(AuditEvent.seq, AuditEvent.occurred_at, AuditEvent.event_type, AuditEvent.outcome, AuditEvent.actor,
               AuditEvent.host, AuditEvent.details)
        .where(AuditEvent.event_type.in_(("model.promoted", "model.rollback", "model.rejected", "model.imported",
                                          "model.trained", "model.shadow", "model.shadow.off",
                                          "model.shadow.disabled")))
        .order_by(AuditEvent.seq.desc()).limit(limit)).all()
    out = []
    for seq, at, event_type, outcome, actor, host, details in rows:
        try:
            data = json.loads(details or "{}")
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        out.append({"seq": seq, "at": at, "event": event_type.split(".", 1)[1], "outcome": outcome, "actor": actor,
                    "host": host, "version": str(data.get("version") or ""), "previous": str(data.get("previous") or ""),
                    "forced": bool(data.get("forced")), "source": str(data.get("source") or ""),
                    "overridden": data.get("overridden") or data.get("refused") or []})
    return out

