"""Filters, time parsing and paging of `storage.audit_query` on a real migrated SQLite database."""
from __future__ import annotations

import time as time_mod
from datetime import datetime, timedelta, timezone

import pytest

from storage import audit, audit_query, db
from storage.audit_query import AuditFilter, AuditQueryError

KEY = b"\x07" * 32
T0 = datetime(2026, 10, 14, 9, 30, tzinfo=timezone.utc)


@pytest.fixture
def utc_tz(monkeypatch):
    """Pin the local time zone so 'local time' assertions are exact."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time_mod.tzset()
    yield
    monkeypatch.undo()
    time_mod.tzset()


def _add(engine, monkeypatch, when: datetime, **fields) -> None:
    monkeypatch.setattr(audit, "_now", lambda: when.astimezone(timezone.utc).isoformat(timespec="microseconds"))
    with db.sessions(engine).begin() as s:
        audit.append(s, KEY, **fields)


@pytest.fixture
def filled(engine, monkeypatch):
    """12 events, one hour apart, of assorted kinds, studies, actors and outcomes."""
    kinds = [
        dict(event_type="association.rejected", outcome=4, actor="aet:EVIL", host="10.0.0.9",
             details={"reason": "calling AE not allowed"}),
        dict(event_type="association.accepted", actor="aet:PACS1", host="10.0.0.2"),
        dict(event_type="instance.stored", actor="aet:PACS1", host="10.0.0.2", study_uid="2.25.100",
             object_uid="2.25.1001"),
        dict(event_type="prediction.created", actor="cxrd:worker", study_uid="2.25.100", object_uid="2.25.1001",
             details={"model": "v1"}),
        dict(event_type="instance.failed", outcome=8, actor="cxrd:worker", study_uid="2.25.200",
             object_uid="2.25.2001"),
        dict(event_type="security.tamper", outcome=12, actor="cxrd:worker", study_uid="2.25.200"),
    ]
    for i in range(12):
        _add(engine, monkeypatch, T0 + timedelta(hours=i), **kinds[i % len(kinds)])
    return engine


def _q(engine, flt: AuditFilter, **kw):
    with db.sessions(db.readonly(engine))() as s:
        return audit_query.query(s, flt, **kw)


def test_event_type_family_and_dicom_id_select_the_right_rows(filled):
    assert [r["seq"] for r in _q(filled, AuditFilter(events=("association.rejected",)))] == [1, 7]
    assert [r["seq"] for r in _q(filled, AuditFilter(events=("association.*",)))] == [1, 2, 7, 8]
    assert [r["seq"] for r in _q(filled, AuditFilter(events=("association",)))] == [1, 2, 7, 8]
    assert {r["event_type"] for r in _q(filled, AuditFilter(events=("110113",)))} == {"security.tamper"}
    both = _q(filled, AuditFilter(events=("instance.stored", "110113")))
    assert [r["seq"] for r in both] == [3, 6, 9, 12]


def test_study_actor_and_outcome_filters_combine(filled):
    study = _q(filled, AuditFilter(study_uid="2.25.200"))
    assert [r["event_type"] for r in study] == ["instance.failed", "security.tamper"] * 2
    assert [r["seq"] for r in _q(filled, AuditFilter(actor="aet:*"))] == [1, 2, 3, 7, 8, 9]
    assert [r["seq"] for r in _q(filled, AuditFilter(actor="aet:PACS1", events=("instance.stored",)))] == [3, 9]
    failures = _q(filled, AuditFilter(outcomes=audit_query.parse_outcomes(["failure"])))
    assert {r["outcome"] for r in failures} == {4, 8, 12} and len(failures) == 6
    assert [r["seq"] for r in _q(filled, AuditFilter(outcomes=(12,), study_uid="2.25.200"))] == [6, 12]


def test_since_is_inclusive_until_is_exclusive_and_details_come_back_as_objects(filled):
    since = audit_query.parse_time((T0 + timedelta(hours=2)).isoformat())
    until = audit_query.parse_time((T0 + timedelta(hours=5)).isoformat())
    rows = _q(filled, AuditFilter(since=since, until=until))
    assert [r["seq"] for r in rows] == [3, 4, 5]
    assert rows[1]["details"] == {"model": "v1"} and rows[0]["occurred_at"].endswith("+00:00")


def test_limit_offset_and_after_seq_page_through_everything_once(filled):
    flt = AuditFilter(events=("association.*", "instance.*"))
    everything = [r["seq"] for r in _q(filled, flt, limit=1000)]
    by_offset, offset = [], 0
    while page := _q(filled, flt, limit=3, offset=offset):
        by_offset += [r["seq"] for r in page]
        offset += 3
    by_cursor, after = [], None
    while page := _q(filled, AuditFilter(**{**flt.__dict__, "after_seq": after}), limit=3):
        by_cursor += [r["seq"] for r in page]
        after = page[-1]["seq"]
    with db.sessions(filled)() as s:
        streamed = [r["seq"] for r in audit_query.iter_events(s, flt, batch=2)]
        assert audit_query.count(s, flt) == len(everything) == 8
        assert audit_query.head_seq(s) == 12
    assert by_offset == by_cursor == streamed == everything


def test_upto_seq_pins_a_result_while_rows_are_appended(filled, monkeypatch):
    pinned = AuditFilter(upto_seq=12)
    _add(filled, monkeypatch, T0 + timedelta(days=1), event_type="audit.query")
    assert len(_q(filled, pinned)) == 12 and len(_q(filled, AuditFilter())) == 13


def test_times_in_local_time_iso_and_words(utc_tz):
    # CEST (UTC+2) on 14 Oct 2026; a date alone is its local midnight
    assert audit_query.parse_time("2026-10-14") == "2026-10-13T22:00:00.000000+00:00"
    assert audit_query.parse_time("2026-10-14 08:15") == "2026-10-14T06:15:00.000000+00:00"
    assert audit_query.parse_time("2026-10-14T08:15:00Z") == "2026-10-14T08:15:00.000000+00:00"
    assert audit_query.parse_time("2026-10-14T08:15:00-05:00") == "2026-10-14T13:15:00.000000+00:00"
    now = datetime(2026, 11, 25, 15, 0).astimezone()  # CET (UTC+1)
    assert audit_query.parse_time("yesterday", now=now) == "2026-11-23T23:00:00.000000+00:00"
    assert audit_query.parse_time("today", now=now) == "2026-11-24T23:00:00.000000+00:00"
    assert audit_query.month_bounds("2026-12") == ("2026-11-30T23:00:00.000000+00:00",
                                                   "2026-12-31T23:00:00.000000+00:00")


@pytest.mark.parametrize("call", [
    lambda: audit_query.parse_time("last tuesday"),
    lambda: audit_query.parse_outcomes(["5"]),
    lambda: audit_query.check_event_selector("instance.stolen"),
    lambda: audit_query.month_bounds("2026-13"),
], ids=["time", "outcome", "event", "month"])
def test_bad_filter_values_are_one_line_errors(call):
    with pytest.raises(AuditQueryError) as err:
        call()
    assert "\n" not in str(err.value)


def test_filters_recorded_in_the_audit_event_hold_only_what_was_given():
    flt = AuditFilter(since="2026-10-01T00:00:00.000000+00:00", events=("association.rejected",),
                      study_uid="2.25.5", outcomes=(4,), extra={"study_given_as": "original"})
    assert flt.as_details() == {"since": "2026-10-01T00:00:00.000000+00:00", "events": ["association.rejected"],
                                "study_uid": "2.25.5", "outcomes": [4], "study_given_as": "original"}
