"""Refusals are counted on the accept path and audited by a thread: one row per source and interval."""
from __future__ import annotations

import threading
import time

from daemon.ops.refusal_audit import OVERFLOW, RefusalAudit


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
    audit.record("EVIL", "10.9.9.8", "association rejected")
    assert rows.rows == []  # nothing is written by record() itself
    assert audit.flush() == 2
    by_host = {r["host"]: r for r in rows.rows}
    assert by_host["10.9.9.9"]["count"] == 500 and by_host["10.9.9.9"]["actor"] == ""
    assert by_host["10.9.9.8"]["count"] == 1 and by_host["10.9.9.8"]["actor"] == "aet:EVIL"
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
