"""Refusals are counted on the accept path and audited by a thread: one row per source, rule and interval."""
from __future__ import annotations

import threading
import time

import logging

from daemon.ops.refusal_audit import MAX_TITLES, OVERFLOW, RefusalAudit


class Rows:
    def __init__(self, delay_s: float = 0.0):
        self.rows: list[dict] = []
        self.delay_s = delay_s

    def __call__(self, event_type: str, **fields) -> None:  # noqa: ANN003
        time.sleep(self.delay_s)
        self.rows.append({"event_type": event_type, **fields})


def test_many_refusals_of_one_source_become_one_row_with_their_count():
    rows = Rows()
    audit = RefusalAudit(rows, interval_s=60)
    for _ in range(500):
        audit.record("", "10.9.9.9", "host not allowed")
    audit.record("EVIL", "10.9.9.8", "calling AE title not allowed", "CXRD")
    assert rows.rows == []  # nothing is written by record() itself
    assert audit.flush() == 2
    by_host = {r["host"]: r for r in rows.rows}
    assert by_host["10.9.9.9"]["count"] == 500 and by_host["10.9.9.9"]["actor"] == ""
    assert by_host["10.9.9.8"]["count"] == 1 and by_host["10.9.9.8"]["actor"] == "aet:EVIL"
    assert by_host["10.9.9.8"]["reason"] == "calling AE title not allowed"
    assert by_host["10.9.9.8"]["called_aets"] == ["CXRD"]
    assert all(r["event_type"] == "association.rejected" and r["outcome"] == 4 for r in rows.rows)
    assert audit.flush() == 0  # counted once


def test_distinct_sources_beyond_the_bound_share_one_overflow_row():
    rows = Rows()
    audit = RefusalAudit(rows, interval_s=60, max_sources=10)
    for i in range(1000):
        audit.record("", f"10.0.{i // 250}.{i % 250}", "host not allowed")
    assert len(audit._tallies) <= 11
    audit.flush()
    overflow = [r for r in rows.rows if r["host"] == OVERFLOW[0]]
    assert len(rows.rows) == 11 and overflow[0]["count"] == 990
    assert sum(r["count"] for r in rows.rows) == 1000


def test_a_slow_audit_write_never_holds_up_a_refusal():
    rows = Rows(delay_s=0.5)
    audit = RefusalAudit(rows, interval_s=0.05)
    audit.start()
    try:
        audit.record("", "10.9.9.9", "host not allowed")
        time.sleep(0.1)  # the writer is now inside its slow write
        t0 = time.monotonic()
        for _ in range(1000):
            audit.record("", "10.9.9.9", "host not allowed")
        assert time.monotonic() - t0 < 0.25
    finally:
        audit.stop()  # flushes what is left
    assert sum(r["count"] for r in rows.rows) == 1001
    assert not any(t.name == "cxrd-refusal-audit" and t.is_alive() for t in threading.enumerate())


def test_one_row_per_host_and_rule_with_the_ae_titles_the_peer_used(caplog):
    rows = Rows()
    audit = RefusalAudit(rows, interval_s=60)
    with caplog.at_level(logging.WARNING, logger="cxrd.gate"):
        for i in range(50):
            audit.record(f"MOD{i % 3}", "10.1.1.1", "called AE title is not ours", "CXRD_TYPO")
        audit.record("PACS", "10.1.1.1", "calling AE title not allowed", "CXRD")
        for i in range(40):  # a peer cycling through AE titles: still one row, titles bounded
            audit.record(f"X{i}", "10.1.1.2", "calling AE title not allowed", f"Y{i}")
    # One log line per (host, rule), not per refusal, and not twice.
    logged = [(r.cxrd_fields["host"], r.cxrd_fields["reason"]) for r in caplog.records]
    assert sorted(logged) == [("10.1.1.1", "called AE title is not ours"), ("10.1.1.1", "calling AE title not allowed"),
                              ("10.1.1.2", "calling AE title not allowed")]
    assert caplog.records[0].cxrd_fields["called_aet"] == "CXRD_TYPO"
    audit.flush()
    rows_by = {(r["host"], r["reason"]): r for r in rows.rows}
    typo = rows_by[("10.1.1.1", "called AE title is not ours")]
    assert typo["count"] == 50 and typo["called_aets"] == ["CXRD_TYPO"]
    assert typo["calling_aets"] == ["MOD0", "MOD1", "MOD2"] and typo["actor"] == ""
    assert rows_by[("10.1.1.1", "calling AE title not allowed")]["actor"] == "aet:PACS"
    cycling = rows_by[("10.1.1.2", "calling AE title not allowed")]
    assert cycling["count"] == 40 and len(cycling["calling_aets"]) == len(cycling["called_aets"]) == MAX_TITLES


def test_refused_hl7_messages_are_counted_per_host_reason_and_ack():
    """The HL7 port's refused messages: an allowed sender resending a broken message in a loop adds one
    row per interval, named after its application, not one per message."""
    rows = Rows()
    audit = RefusalAudit(rows, interval_s=60, event_type="report.refused", log_event="hl7.message_refused",
                         actor_prefix="hl7:", titles=("sending_applications", "sending_facilities"))
    for _ in range(300):
        audit.record("RIS", "10.1.1.1", "OBR-3 missing", "GENHOSP", ack="AE", error="101")
    audit.record("RIS", "10.1.1.1", "OBR-3 missing", "GENHOSP", ack="AR", error="101")
    audit.record("", "10.1.1.1", "message could not be read", "", ack="AE", error="207")
    assert audit.flush() == 3
    by = {(r["reason"], r["ack"]): r for r in rows.rows}
    loop = by[("OBR-3 missing", "AE")]
    assert loop["count"] == 300 and loop["actor"] == "hl7:RIS" and loop["event_type"] == "report.refused"
    assert loop["sending_applications"] == ["RIS"] and loop["sending_facilities"] == ["GENHOSP"]
    assert loop["error"] == "101" and "calling_aets" not in loop
    assert by[("OBR-3 missing", "AR")]["count"] == 1
    assert by[("message could not be read", "AE")]["actor"] == ""  # no sender named: no actor
