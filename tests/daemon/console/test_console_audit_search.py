"""The compliance pages' query layer: keyset pages, the form rules shared with the CLI, per-day
counts in local days, and the background verification, on a real migrated state."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text
from starlette.datastructures import MultiDict

from config import load_settings
from daemon.console import audit_search
from daemon.console.audit_verify_job import VerifyJob
from daemon.runtime import Runtime
from storage import audit
from storage.deid import pseudonymize_uid

STUDY = "2.25.271828182845904523536028747135266249"
ORIGINAL = "1.2.826.0.1.3680043.8.498.7654321"


@pytest.fixture
def rt(cli_state) -> Runtime:
    return Runtime(load_settings(None))


def _append_at(rt: Runtime, monkeypatch, when: datetime, **kw) -> None:
    monkeypatch.setattr(audit, "_now", lambda: when.astimezone(timezone.utc).isoformat(timespec="microseconds"))
    with rt.sessions.begin() as s:
        audit.append(s, rt.keys.audit_key, **kw)
    monkeypatch.undo()


def _fill(rt: Runtime, n: int) -> None:
    with rt.sessions.begin() as s:
        for i in range(n):
            audit.append(s, rt.keys.audit_key, event_type="instance.stored" if i % 3 else "association.rejected",
                         outcome=0 if i % 3 else 4, actor="aet:MODALITY" if i % 3 else "aet:EVIL",
                         study_uid=STUDY if i % 10 == 0 else "")


def _search(rt: Runtime, **params) -> audit_search.Search:
    items = [(k, v) for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])]
    return audit_search.read_search(MultiDict(items), lambda: rt.keys.uid_key)


def test_pages_walk_every_match_once_newest_first_and_back(rt):
    _fill(rt, 95)
    with rt.read_sessions() as s:
        srch = _search(rt, event="instance.*", limit="25")
        seen, pages, p = [], 0, audit_search.page(s, srch)
        first = p
        while True:
            pages += 1
            seen += [e["seq"] for e in p.events]
            if p.older is None:
                break
            p = audit_search.page(s, audit_search.Search(srch.flt, srch.study, srch.limit, before=p.older))
        expected = [r[0] for r in s.execute(text(
            "SELECT seq FROM audit_events WHERE event_type LIKE 'instance.%' ORDER BY seq DESC"))]
        assert seen == expected and pages == 3 and first.newer is None
        # from the last page, `newer` leads back to the page before it
        back = audit_search.page(s, audit_search.Search(srch.flt, srch.study, srch.limit, after=p.newer))
        assert [e["seq"] for e in back.events] == expected[25:50]
        assert first.head == s.execute(text("SELECT max(seq) FROM audit_events")).scalar()


def test_page_query_uses_keyset_and_never_offset_or_count(rt):
    _fill(rt, 30)
    statements: list[tuple[str, tuple]] = []
    sa_event.listen(rt.read_sessions.kw["bind"], "before_cursor_execute",
                    lambda conn, cur, stmt, params, *a: statements.append((stmt.upper(), tuple(params))))
    with rt.read_sessions() as s:
        audit_search.page(s, audit_search.Search(_search(rt).flt, _search(rt).study, 25, before=20))
    assert any("SEQ <" in stmt and "ORDER BY AUDIT_EVENTS.SEQ DESC" in stmt for stmt, _ in statements)
    assert not any("COUNT(" in stmt for stmt, _ in statements)
    # SQLite renders every LIMIT as `LIMIT ? OFFSET ?`: the offset must always be 0
    assert all(params[-1] == 0 for stmt, params in statements if "OFFSET" in stmt)


def test_form_follows_the_cli_rules(rt):
    with pytest.raises(audit_search.FormError, match="pseudonymous"):
        _search(rt, study=ORIGINAL)
    with pytest.raises(audit_search.FormError, match="reason is only used"):
        _search(rt, reason="ticket 1")
    with pytest.raises(audit_search.FormError, match="unknown audit event"):
        _search(rt, event="nosuch.thing")
    with pytest.raises(audit_search.FormError, match="not both"):
        _search(rt, month="2026-10", since="2026-10-01")
    with pytest.raises(audit_search.FormError, match="before until"):
        _search(rt, since="2026-10-02", until="2026-10-01")
    with pytest.raises(audit_search.FormError, match="outcome"):
        _search(rt, outcome="sometimes")
    srch = _search(rt, study=ORIGINAL, reason="ticket 1", outcome="failure", actor="aet:*")
    assert srch.flt.study_uid == pseudonymize_uid(rt.keys.uid_key, ORIGINAL) != ORIGINAL
    assert srch.flt.outcomes == (4, 8, 12) and srch.study.original
    # a paging link carries the pseudonym, never the original nor the reason
    params = dict(srch.link_params())
    assert params["study"] == srch.flt.study_uid and "reason" not in params
    assert ORIGINAL not in str(srch.link_params())
    local = datetime.combine(date(2026, 10, 1), time.min).astimezone().astimezone(timezone.utc)
    assert _search(rt, month="2026-10").flt.since == local.isoformat(timespec="microseconds")


def test_per_day_counts_use_local_days(rt, monkeypatch):
    today = datetime.now().astimezone().date()
    day0 = today - timedelta(days=2)
    for d, hour, outcome in ((day0, 0, 0), (day0, 23, 4), (day0 + timedelta(days=1), 12, 0)):
        when = datetime.combine(d, time(hour, 30)).astimezone()
        _append_at(rt, monkeypatch, when, event_type="association.rejected", outcome=outcome, actor="aet:X")
    with rt.read_sessions() as s:
        days = audit_search.per_day(s, day0, day0 + timedelta(days=1))
        only = audit_search.per_day(s, day0, day0, flt=_search(rt, outcome="failure").flt)
    assert [(x.events, x.failures) for x in days] == [(2, 1), (1, 0)]
    assert [(x.events, x.failures) for x in only] == [(1, 1)]


def test_background_verification_reports_progress_and_records_itself(rt):
    _fill(rt, 60)
    job = VerifyJob()
    assert job.start(rt, actor="console:olivia", host="192.0.2.7", batch=10)
    state = job.wait()
    assert state.result["ok"] and state.checked == state.total and state.percent == 100
    with rt.read_sessions() as s:
        last = audit_search.last_events(s, "audit.verify", limit=1)[0]
    assert (last["seq"], last["actor"], last["host"], last["event_id"]) == \
        (state.recorded_seq, "console:olivia", "192.0.2.7", "110101")
    assert last["details"]["ok"] is True and last["details"]["head"].startswith(f"{state.total}:")
    # an edited row: the next run reports it as the first bad row
    with rt.engine.begin() as c:
        c.execute(text("UPDATE audit_events SET actor = 'aet:FORGED' WHERE seq = 17"))
    job.start(rt, actor="console:olivia", host="192.0.2.7")
    state = job.wait()
    assert state.result["ok"] is False and state.result["first_bad_seq"] == 17
    with rt.read_sessions() as s:
        last = audit_search.last_events(s, "audit.verify", limit=1)[0]
    assert last["outcome"] == 12 and last["details"]["first_bad_seq"] == 17
