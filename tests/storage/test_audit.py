"""The keyed audit chain on a real SQLite database created by the migrations."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from storage import audit, db
from storage.errors import AuditError
from storage.models import AuditEvent

KEY = b"\x07" * 32


def _fill(engine, n: int = 10) -> None:
    sessions = db.sessions(engine)
    for i in range(n):
        with sessions.begin() as s:
            audit.append(s, KEY, event_type="instance.stored", actor="PACS1", host="10.0.0.2",
                         study_uid=f"2.25.{i}", object_uid=f"2.25.{1000 + i}", details={"bytes": i})


def _verify(engine, **kw):
    with db.sessions(db.readonly(engine))() as s:
        return audit.verify(s, KEY, **kw)


def test_appended_events_form_an_intact_chain_with_mapped_event_ids(engine):
    _fill(engine, 5)
    with db.sessions(engine).begin() as s:
        row = audit.append(s, KEY, event_type="reid.lookup", details={"reason": "ticket 7"})
        assert (row.seq, row.event_id, row.action) == (6, "110110", "R")
        assert row.occurred_at.endswith("+00:00")
    report = _verify(engine)
    assert report.ok and report.rows == 6 and report.first_bad_seq is None and report.last_seq == 6


@pytest.mark.parametrize("sql,bad_seq,why", [
    ("UPDATE audit_events SET outcome = 8 WHERE seq = 4", 4, "modified"),
    ("UPDATE audit_events SET details = replace(details, '6', '9') WHERE seq = 7", 7, "modified"),
    ("DELETE FROM audit_events WHERE seq = 5", 5, "missing"),
    ("UPDATE audit_events SET seq = -3 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = 6; "
     "UPDATE audit_events SET seq = 6 WHERE seq = -3", 3, "link"),
    ("DELETE FROM audit_events WHERE seq = 1", 1, "missing"),
], ids=["update-outcome", "update-details", "delete-middle", "reorder", "delete-first"])
def test_changed_removed_or_reordered_rows_are_found(engine, sql, bad_seq, why):
    _fill(engine, 10)
    assert _verify(engine).ok
    with engine.begin() as conn:
        for statement in sql.split("; "):
            conn.execute(text(statement))
    report = _verify(engine)
    assert not report.ok and report.first_bad_seq == bad_seq and why in report.reason


def test_recomputing_a_plain_hash_does_not_help_a_forger(engine):
    import hashlib
    _fill(engine, 3)
    forged = hashlib.sha256(b"anything").hexdigest()
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'someone', hash = :h WHERE seq = 3"), {"h": forged})
    assert _verify(engine).first_bad_seq == 3
    with db.sessions(db.readonly(engine))() as s:
        assert not audit.verify(s, b"\x08" * 32).ok  # wrong key: first row already fails


def test_truncating_the_tail_is_found_against_an_anchor(engine):
    _fill(engine, 6)
    head = _verify(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq >= 5"))
    assert _verify(engine).ok  # invisible to the chain alone ...
    report = _verify(engine, expect_head=(head.last_seq, head.last_hash))
    assert not report.ok and report.first_bad_seq == 5  # ... but not to the anchor


def test_concurrent_writers_keep_one_unbroken_chain(engine):
    sessions = db.sessions(engine)
    errors = []

    def writer(t: int) -> None:
        try:
            for i in range(15):
                with sessions.begin() as s:
                    audit.append(s, KEY, event_type="instance.stored", actor=f"T{t}", details={"i": i})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    report = _verify(engine)
    assert report.ok and report.rows == 60


def test_append_joins_the_callers_transaction(engine):
    sessions = db.sessions(engine)
    with sessions() as s:
        audit.append(s, KEY, event_type="instance.stored")
        s.rollback()  # the ingest failed after auditing: no orphan audit row
    with sessions() as s:
        assert s.query(AuditEvent).count() == 0


def test_unknown_event_types_and_bad_details_are_refused(engine):
    with db.sessions(engine).begin() as s:
        with pytest.raises(AuditError, match="unknown audit event type"):
            audit.append(s, KEY, event_type="made.up")
        with pytest.raises(AuditError, match="JSON"):
            audit.append(s, KEY, event_type="app.start", details={"x": object()})
        with pytest.raises(AuditError, match="outcome"):
            audit.append(s, KEY, event_type="app.start", outcome=3)
        with pytest.raises(AuditError, match="control characters"):
            audit.append(s, KEY, event_type="app.start", actor="evil\x1fseparator")
        row = audit.append(s, KEY, event_type="custom.thing", event_id="110100")
        assert row.action == "E"


def test_every_mapped_event_has_a_dicom_event_id_and_action():
    for name, (event_id, action) in audit.EVENTS.items():
        assert event_id.startswith("1101") and len(event_id) == 6, name
        assert action in "CRUDE", name


def test_tamper_errors_are_recorded_as_major_security_alerts(engine):
    from storage.errors import TamperError
    with db.sessions(engine).begin() as s:
        row = audit.record_tamper(s, KEY, TamperError("2.25.77", "payload does not authenticate"), actor="worker")
    assert (row.event_id, row.outcome, row.object_uid) == ("110113", 12, "2.25.77")
    assert "payload" in row.details and _verify(engine).ok
