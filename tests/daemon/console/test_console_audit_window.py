"""A time-window search reads the window, not the rest of the trail: its seq bounds come from the
`occurred_at` index (the whole plan names an index or the primary-key range), and they stay exact
when the clock stepped back between rows."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from starlette.datastructures import MultiDict

from config import load_settings
from daemon.console import audit_search
from daemon.runtime import Runtime
from storage import audit
from storage.models import AuditEvent

T0 = datetime(2026, 3, 10, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def rt(cli_state) -> Runtime:
    return Runtime(load_settings(None))


def _append_at(rt: Runtime, monkeypatch, minutes: int) -> None:
    when = (T0 + timedelta(minutes=minutes)).isoformat(timespec="microseconds")
    monkeypatch.setattr(audit, "_now", lambda: when)
    with rt.sessions.begin() as s:
        audit.append(s, rt.keys.audit_key, event_type="instance.stored", actor="aet:MODALITY")
    monkeypatch.undo()


def _window(rt: Runtime, since: int, until: int) -> audit_search.Search:
    fmt = "%Y-%m-%dT%H:%M:%S+00:00"
    return audit_search.read_search(MultiDict([("since", (T0 + timedelta(minutes=since)).strftime(fmt)),
                                               ("until", (T0 + timedelta(minutes=until)).strftime(fmt))]),
                                    lambda: rt.keys.uid_key)


def test_window_bounds_stay_exact_when_the_clock_stepped_back(rt, monkeypatch):
    with rt.read_sessions() as s:
        base = s.scalar(select(func.max(AuditEvent.seq))) or 0  # the rows `cxrd init` wrote
    for minutes in (0, 10, 5, 20, 3, 12, 30):  # the clock stepped back twice
        _append_at(rt, monkeypatch, minutes)
    with rt.read_sessions() as s:
        page = audit_search.page(s, _window(rt, 4, 15))
    assert sorted(e["seq"] - base for e in page.events) == [2, 3, 6]  # 10, 5 and 12 minutes


def test_window_search_plans_read_indexes_only(rt, monkeypatch):
    for minutes in range(0, 600, 7):
        _append_at(rt, monkeypatch, minutes)
    statements: list[tuple[str, tuple]] = []

    def keep(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        statements.append((statement, parameters))

    sa_event.listen(rt.engine, "before_cursor_execute", keep)
    try:
        with rt.read_sessions() as s:
            page = audit_search.page(s, _window(rt, 120, 180))
    finally:
        sa_event.remove(rt.engine, "before_cursor_execute", keep)
    assert page.events
    with rt.engine.connect() as c:
        for statement, params in statements:
            if "occurred_at >=" not in statement:  # the head's max(seq) alone is one step along the key
                continue
            for row in c.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params):
                detail = row[-1]
                # a bare "SEARCH audit_events" is min/max walking the primary key, testing every row
                assert "audit_events" not in detail or "USING" in detail, (statement, detail)
