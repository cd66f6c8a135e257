"""The compliance pages' reading of the audit trail: a search form's values -> filters, one page of
events at a time, one event, the per-day counts, the last verifications.

Why keyset pages and no total: at millions of rows `OFFSET n` reads and throws away n rows, and a
`COUNT(*)` of everything matching reads them all, on every page. A page here is `seq < cursor ORDER
BY seq DESC LIMIT n+1` (the extra row says whether there is more), which the (column, seq) indexes of
migration 0010 answer by reading about n index entries whatever the table's size. The size of the
whole trail is shown as the head's seq (rows are numbered without gaps, so it is exact and free).

Filters mean exactly what they mean to `cxrd audit query` (the same `storage.audit_query` filter and
the same `storage.study_use` rule for original UIDs); times are read in the hospital's local time
(this machine's zone), as the CLI reads them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Callable, Mapping

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from storage import audit_query
from storage.audit import AUDIT_LOG_USED, EVENTS, OUTCOMES
from storage.audit_query import AuditFilter, AuditQueryError
from storage.models import AuditEvent
from storage.study_use import StudyChoice, StudyChoiceError, choose

PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PAGE = 50
#: the families offered in the form (`association.*` ...), from the one table of event types
FAMILIES = tuple(sorted({name.split(".")[0] for name in EVENTS}))
FIELD_MAX = 200  # longest value read from any form field (everything longer is refused, not cut)


class FormError(ValueError):
    """A value typed in the search form cannot be used; the message names the field."""


@dataclass(frozen=True)
class Search:
    """A search form read and checked: the filter on pseudonyms, the study as given (to audit), the
    paging position, and the form's values to show again in the form."""
    flt: AuditFilter
    study: StudyChoice
    limit: int = DEFAULT_PAGE
    before: int | None = None   # newest-first cursor: show events with seq < before
    after: int | None = None    # going back towards newer events: seq > after
    form: dict[str, Any] = field(default_factory=dict)

    def link_params(self) -> list[tuple[str, str]]:
        """The form as query parameters for paging links. An original Study Instance UID and its
        reason are left out: a link would put them in logs and browser history; a page reached by
        such a link searches the pseudonym instead (it was mapped and audited once)."""
        out: list[tuple[str, str]] = []
        for key in ("since", "until", "month", "actor"):
            if self.form.get(key):
                out.append((key, self.form[key]))
        out += [("event", e) for e in self.form.get("event", ())]
        out += [("outcome", o) for o in self.form.get("outcome", ())]
        if self.study.pseudonym:
            out.append(("study", self.study.pseudonym))
        if self.limit != DEFAULT_PAGE:
            out.append(("limit", str(self.limit)))
        return out


def _one(params: Mapping[str, Any], name: str) -> str:
    v = params.get(name) or ""
    v = str(v).strip()
    if len(v) > FIELD_MAX and name != "reason":
        raise FormError(f"{name}: too long")
    return v


def _many(params: Any, name: str) -> list[str]:
    values = params.getlist(name) if hasattr(params, "getlist") else params.get(name, [])
    values = [values] if isinstance(values, str) else list(values)
    out = [str(v).strip() for v in values if str(v).strip()]
    if len(out) > 40 or any(len(v) > FIELD_MAX for v in out):
        raise FormError(f"{name}: too many or too long values")
    return out


def _cursor(text: str, name: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or len(text) > 18:
        raise FormError(f"{name}: not a row number")
    return int(text)


def read_search(params: Any, uid_key: Callable[[], bytes], *, now: datetime | None = None,
                extra_events: tuple[str, ...] = ()) -> Search:
    """A search form (query parameters) -> Search; FormError with a one-line message on bad input.

    Same rules as `cxrd audit query`: `month` or `since`/`until` (local time), repeatable `event`
    (type, family or DICOM id), `actor` exact or prefix*, repeatable `outcome`, `study` pseudonymous,
    or original with `reason` (mapped with `uid_key`; the caller records the use)."""
    form: dict[str, Any] = {k: _one(params, k) for k in ("since", "until", "month", "actor", "study")}
    form["reason"] = _one(params, "reason")
    form["event"] = _many(params, "event")
    form["outcome"] = _many(params, "outcome")
    try:
        if form["month"] and (form["since"] or form["until"]):
            raise FormError("give either a month or a from/until window, not both")
        if form["month"]:
            since, until = audit_query.month_bounds(form["month"])
        else:
            since = audit_query.parse_time(form["since"], now=now) if form["since"] else None
            until = audit_query.parse_time(form["until"], now=now) if form["until"] else None
            if since and until and since >= until:
                raise FormError("from must be before until")
        events = tuple(audit_query.check_event_selector(e) for e in form["event"]) + extra_events
        outcomes = audit_query.parse_outcomes(form["outcome"])
    except AuditQueryError as exc:
        raise FormError(str(exc)) from None
    try:
        study = choose(uid_key, form["study"] or None, form["reason"] or None,
                       study_name="Study UID", reason_name="reason")
    except StudyChoiceError as exc:
        raise FormError(str(exc)) from None
    limit_text = _one(params, "limit")
    limit = int(limit_text) if limit_text.isdigit() else DEFAULT_PAGE
    if limit not in PAGE_SIZES:
        raise FormError(f"limit: one of {', '.join(map(str, PAGE_SIZES))}")
    before, after = _cursor(_one(params, "before"), "before"), _cursor(_one(params, "after"), "after")
    flt = AuditFilter(since=since, until=until, events=events, study_uid=study.pseudonym,
                      actor=form["actor"] or None, outcomes=outcomes, extra=study.extra)
    return Search(flt, study, limit, before, after, form)


@dataclass(frozen=True)
class Page:
    events: list[dict[str, Any]]
    older: int | None      # cursor for the next (older) page: its `before`, None at the oldest
    newer: int | None      # cursor for the previous (newer) page: its `after`, None at the newest
    head: int              # the trail's newest seq: how many rows there are in all


def page(session: Session, search: Search) -> Page:
    """One page, newest first, by keyset on seq (see the module docstring)."""
    n = search.limit
    c = AuditEvent
    cols = audit_query.columns(c)
    conds = audit_query.conditions(search.flt)
    window = _window_seqs(session, search.flt)
    if window is None:
        return Page([], None, None, audit_query.head_seq(session))
    conds += window
    if search.after is not None and search.before is None:
        stmt = select(*cols).where(c.seq > search.after, *conds).order_by(c.seq.asc()).limit(n + 1)
        rows = [audit_query.as_event(r) for r in session.execute(stmt)]
        newer_exist = len(rows) > n
        rows = list(reversed(rows[:n]))
        older = rows[-1]["seq"] if rows else None
        newer = rows[0]["seq"] if rows and newer_exist else None
        if older is not None and not _exists(session, conds, c.seq < older):
            older = None
    else:
        bound = [c.seq < search.before] if search.before is not None else []
        stmt = select(*cols).where(*bound, *conds).order_by(c.seq.desc()).limit(n + 1)
        rows = [audit_query.as_event(r) for r in session.execute(stmt)]
        older = rows[n - 1]["seq"] if len(rows) > n else None
        rows = rows[:n]
        newer = rows[0]["seq"] if rows and search.before is not None and \
            _exists(session, conds, c.seq > rows[0]["seq"]) else None
    return Page(rows, older, newer, audit_query.head_seq(session))


def _window_seqs(session: Session, flt: AuditFilter) -> list | None:
    """A time window as seq bounds too (None: nothing in it), added to the time conditions.

    The bounds are the smallest and largest seq of the rows inside the window, whatever order the
    clock gave them, so they never drop a match; the page is then read backwards along the primary
    key from the window's end instead of sorting every row of a month by seq. Both come from one
    aggregate over the window itself, read from an `occurred_at` index (the window's entries only).
    `seq + 0` keeps both planners from answering min/max by walking the primary key and testing
    each row's time, which reads every row between the table's end and the window (half a year of
    rows for a day six months back); bounding each side separately (min(seq) of everything after
    `since`, max(seq) of everything before `until`) costs the same.
    """
    c = AuditEvent
    if not (flt.since or flt.until):
        return []
    inside = ([c.occurred_at >= flt.since] if flt.since else []) + ([c.occurred_at < flt.until] if flt.until else [])
    lo, hi = session.execute(select(func.min(c.seq + 0), func.max(c.seq + 0)).where(*inside)).one()
    if lo is None:
        return None
    return [c.seq >= lo, c.seq <= hi]


def _exists(session: Session, conds: list, bound: Any) -> bool:
    return session.execute(select(AuditEvent.seq).where(bound, *conds).limit(1)).first() is not None


def event(session: Session, seq: int) -> dict[str, Any] | None:
    """One row by seq, as the search shows it (details parsed)."""
    cols = audit_query.columns()
    row = session.execute(select(*cols).where(AuditEvent.seq == seq)).first()
    return audit_query.as_event(row) if row else None


def neighbours(session: Session, seq: int) -> tuple[int | None, int | None]:
    """The seq before and after this one that exist (links on the detail page)."""
    prev = session.scalar(select(func.max(AuditEvent.seq)).where(AuditEvent.seq < seq))
    nxt = session.scalar(select(func.min(AuditEvent.seq)).where(AuditEvent.seq > seq))
    return prev, nxt


# -- per-day counts ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Day:
    day: date
    events: int
    failures: int


def local_day_bounds(day: date) -> tuple[str, str]:
    """A local calendar day -> its first instant and the next day's, as stored UTC strings (a day
    of a daylight-saving change is 23 or 25 hours long, as a person means it): the CLI's reading of
    a date, its local midnight."""
    return audit_query.parse_time(day.isoformat()), audit_query.parse_time((day + timedelta(days=1)).isoformat())


def per_day(session: Session, first: date, last: date, *, flt: AuditFilter | None = None) -> list[Day]:
    """Events and failures (outcome non-zero) for each local day first..last (inclusive).

    One range count per day on (occurred_at, outcome): each reads only that day's index entries,
    and day boundaries are exact local midnights whatever the zone's offset."""
    if last < first:
        return []
    base = audit_query.conditions(replace(flt, since=None, until=None)) if flt is not None else []
    fail = func.sum(case((AuditEvent.outcome != 0, 1), else_=0))
    out: list[Day] = []
    d = first
    while d <= last:
        lo, hi = local_day_bounds(d)
        stmt = select(func.count(), fail).where(AuditEvent.occurred_at >= lo, AuditEvent.occurred_at < hi, *base)
        n, f = session.execute(stmt).one()
        out.append(Day(d, int(n or 0), int(f or 0)))
        d += timedelta(days=1)
    return out


# -- verifications and uses of the trail ---------------------------------------------------------
def last_events(session: Session, event_type: str, *, limit: int = 5) -> list[dict[str, Any]]:
    """The newest events of one type (e.g. the last verifications), newest first."""
    cols = audit_query.columns()
    stmt = select(*cols).where(AuditEvent.event_type == event_type).order_by(AuditEvent.seq.desc()).limit(limit)
    return [audit_query.as_event(r) for r in session.execute(stmt)]


AUDIT_USE = AUDIT_LOG_USED  # DICOM 110101: every search, view, export and verification of the trail


# -- presentation helpers shared by the pages ----------------------------------------------------
def local_time(stored: str) -> str:
    """A stored UTC instant -> `2026-11-24 09:00:01 +01:00` in this machine's (the hospital's) zone."""
    try:
        moment = datetime.fromisoformat(stored).astimezone()
    except (TypeError, ValueError):
        return str(stored)[:40]
    return moment.strftime("%Y-%m-%d %H:%M:%S %z")[:-2] + ":" + moment.strftime("%z")[-2:]


def outcome_name(outcome: int) -> str:
    return OUTCOMES.get(int(outcome), str(outcome))


def details_json(details: Any) -> str:
    return json.dumps(details or {}, indent=2, sort_keys=True, ensure_ascii=True)
