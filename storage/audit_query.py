"""Reading the audit trail: filters, paging and streaming over `audit_events`.

Why here and not in the CLI: the compliance commands (`cxrd audit query/export`) and any later HTTP
view need the same filter semantics, and tests can exercise them on a plain database. Filtering never
needs PHI: studies and objects are stored (and searched) by pseudonymous UID only; mapping an original
UID to its pseudonym is the caller's job (`storage.deid.pseudonymize_uid`), and so is auditing that.

Times are compared as strings: `occurred_at` is always `datetime.isoformat(timespec="microseconds")`
in UTC (`...+00:00`), which sorts lexicographically in time order, so the index on it is used as is.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterator

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from storage.audit import EVENTS, OUTCOMES
from storage.errors import AuditError
from storage.models import AuditEvent

#: outcome names accepted wherever a number is (`--outcome failure` = every non-zero outcome)
OUTCOME_NAMES = {"success": (0,), "minor": (4,), "serious": (8,), "major": (12,), "failure": (4, 8, 12)}

COLUMNS = ("seq", "occurred_at", "event_id", "event_type", "action", "outcome", "actor", "host",
           "study_uid", "object_uid", "details", "prev_hash", "hash")


class AuditQueryError(AuditError):
    """A filter value could not be understood (bad time, unknown event or outcome)."""


def parse_time(text: str, *, now: datetime | None = None) -> str:
    """An instant given by a person -> the UTC ISO string audit rows are stored with.

    Accepts ISO 8601 with an offset (`2026-11-24T08:00:00+01:00`, `...Z`), or a local date/time
    without one (`2026-11-24`, `2026-11-24 08:00`, interpreted in this machine's time zone), or the
    words `now`, `today`, `yesterday` (local midnight). A date alone means its local midnight.
    """
    raw = (text or "").strip()
    now = now or datetime.now().astimezone()
    word = raw.lower()
    if word == "now":
        moment = now
    elif word in ("today", "yesterday"):
        midnight = datetime.combine(now.date(), time.min)
        if word == "yesterday":
            midnight -= timedelta(days=1)
        moment = midnight.astimezone()  # naive local -> aware local
    else:
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise AuditQueryError(f"cannot read time {raw[:40]!r}: use ISO 8601 (2026-11-24 or "
                                  "2026-11-24T08:00:00+01:00) or now/today/yesterday") from None
        if moment.tzinfo is None:
            moment = moment.astimezone()  # local wall time
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def month_bounds(month: str) -> tuple[str, str]:
    """`2026-10` -> (local first instant of October, local first instant of November) in UTC ISO."""
    m = re.fullmatch(r"(\d{4})-(\d{2})", month.strip())
    if not m or not 1 <= int(m[2]) <= 12:
        raise AuditQueryError(f"month must look like 2026-10, not {month[:20]!r}")
    y, mo = int(m[1]), int(m[2])
    first = date(y, mo, 1)
    nxt = date(y + (mo == 12), mo % 12 + 1, 1)
    return parse_time(first.isoformat()), parse_time(nxt.isoformat())


def parse_outcomes(values: list[str] | tuple[str, ...]) -> tuple[int, ...]:
    """`0`, `4`, `8`, `12` or success/minor/serious/major/failure -> outcome numbers."""
    out: list[int] = []
    for v in values:
        v = str(v).strip().lower()
        if v in OUTCOME_NAMES:
            out.extend(OUTCOME_NAMES[v])
        elif v.isdigit() and int(v) in OUTCOMES:
            out.append(int(v))
        else:
            raise AuditQueryError(f"outcome must be one of 0, 4, 8, 12 or {', '.join(OUTCOME_NAMES)}; "
                                  f"not {v[:20]!r}")
    return tuple(sorted(set(out)))


def check_event_selector(value: str) -> str:
    """An event selector is a cxrd type (`association.rejected`), a family (`association.*` or
    `association`), or a DICOM event id (`110113`). Unknown names are refused so a typo does not
    silently return nothing."""
    v = value.strip()
    if re.fullmatch(r"\d{6}", v):
        return v
    family = v[:-2] if v.endswith(".*") else v
    if v in EVENTS or any(name.split(".")[0] == family for name in EVENTS):
        return v
    raise AuditQueryError(f"unknown audit event {v[:40]!r}; known types: {', '.join(sorted(EVENTS))}")


@dataclass(frozen=True)
class AuditFilter:
    """What to select. Times are UTC ISO strings from `parse_time`; `until` is exclusive."""
    since: str | None = None
    until: str | None = None
    events: tuple[str, ...] = ()
    study_uid: str | None = None      # pseudonym
    object_uid: str | None = None     # pseudonym
    actor: str | None = None          # exact, or a prefix ending in '*' (e.g. 'aet:*')
    outcomes: tuple[int, ...] = ()
    after_seq: int | None = None
    upto_seq: int | None = None       # inclusive upper bound: pins a result while new rows arrive
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def as_details(self) -> dict[str, Any]:
        """The filters as recorded in the `audit.query`/`audit.export` event (pseudonyms only)."""
        d = {k: v for k, v in asdict(self).items() if v not in (None, (), {}) and k != "extra"}
        d.update(self.extra)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _where(flt: AuditFilter) -> list:
    c = AuditEvent
    conds: list = []
    if flt.since:
        conds.append(c.occurred_at >= flt.since)
    if flt.until:
        conds.append(c.occurred_at < flt.until)
    if flt.after_seq is not None:
        conds.append(c.seq > flt.after_seq)
    if flt.upto_seq is not None:
        conds.append(c.seq <= flt.upto_seq)
    if flt.events:
        alts = []
        for e in flt.events:
            if re.fullmatch(r"\d{6}", e):
                alts.append(c.event_id == e)
            elif e in EVENTS and not e.endswith(".*"):
                alts.append(c.event_type == e)
            else:
                family = e[:-2] if e.endswith(".*") else e
                alts.append(or_(c.event_type == family, c.event_type.startswith(family + ".")))
        conds.append(or_(*alts))
    if flt.study_uid:
        conds.append(c.study_uid == flt.study_uid)
    if flt.object_uid:
        conds.append(c.object_uid == flt.object_uid)
    if flt.actor:
        conds.append(c.actor.startswith(flt.actor[:-1]) if flt.actor.endswith("*") else c.actor == flt.actor)
    if flt.outcomes:
        conds.append(c.outcome.in_(flt.outcomes))
    return conds


def columns(entity: Any = AuditEvent) -> list[Any]:
    """The columns every reader of the trail shows, in COLUMNS order, of `entity` (the table or an
    alias of it); `as_event` turns such a row back into a dict."""
    return [getattr(entity, name) for name in COLUMNS]


def _select(flt: AuditFilter) -> Select:
    conds = _where(flt)
    stmt = select(*columns())
    return stmt.where(and_(*conds)) if conds else stmt


def _as_dict(row) -> dict[str, Any]:  # noqa: ANN001 - a Row
    d = dict(zip(COLUMNS, row))
    try:
        d["details"] = json.loads(d["details"] or "{}")
    except ValueError:  # a row edited by hand; `verify` reports it, the query still shows it
        d["details"] = {"unparsed": str(d["details"])[:200]}
    return d


#: for readers that build their own statements over the same filters (the console's keyset pages)
conditions = _where
as_event = _as_dict


def query(session: Session, flt: AuditFilter, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """One page of matching events in seq order (oldest first)."""
    if limit < 1 or offset < 0:
        raise AuditQueryError("limit must be at least 1 and offset not negative")
    stmt = _select(flt).order_by(AuditEvent.seq).limit(limit).offset(offset)
    return [_as_dict(r) for r in session.execute(stmt)]


def count(session: Session, flt: AuditFilter) -> int:
    conds = _where(flt)
    stmt = select(func.count()).select_from(AuditEvent)
    return int(session.scalar(stmt.where(and_(*conds)) if conds else stmt) or 0)


def head_seq(session: Session) -> int:
    """The newest seq (0 when empty)."""
    return int(session.scalar(select(func.max(AuditEvent.seq))) or 0)


def iter_events(session: Session, flt: AuditFilter, *, batch: int = 5000) -> Iterator[dict[str, Any]]:
    """Every matching event in seq order, fetched in keyset pages so a year of rows fits in memory
    as easily as a day (no OFFSET scans, no long-lived server cursor)."""
    after = flt.after_seq
    while True:
        page_flt = replace(flt, after_seq=after)
        rows = session.execute(_select(page_flt).order_by(AuditEvent.seq).limit(batch)).all()
        for r in rows:
            yield _as_dict(r)
        if len(rows) < batch:
            return
        after = rows[-1][0]
