"""Refused connections and associations, audited off the accept path and aggregated per source.

A refusal happens in pynetdicom's accept loop (a host not on the allow-list) or in an association's
thread (a wrong AE title, the association limit). Writing its audit row there would cost every refusal
a database commit on the path that also admits the PACS, so a host that opens connections in a loop
could stall the gate and grow the audit trail without bound. Here a refusal only counts, in memory;
a background thread writes one `association.rejected` row per (host, calling AE title, reason) and
interval, with how many refusals it stands for and when the first and last came. Memory is bounded:
at most `max_sources` distinct keys per interval, the rest counted together in one overflow row.
The first refusal of a key in an interval is also logged at once; the rest only in the row.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from daemon.ops.logs import event

log = logging.getLogger("cxrd.gate")

# write(event_type, outcome=..., actor=..., host=..., **details): one audit row
AuditWrite = Callable[..., None]
OVERFLOW = ("(other hosts)", "", "more distinct refused sources than tracked in one interval")


@dataclass
class _Tally:
    count: int
    first_at: datetime
    last_at: datetime


class RefusalAudit:
    """Stage: `record()` from any thread, never blocking on the database; rows written every interval."""

    name = "refusal-audit"

    def __init__(self, write: AuditWrite, interval_s: float = 1.0, max_sources: int = 256):
        self.write = write
        self.interval_s = interval_s
        self.max_sources = max_sources
        self._tallies: dict[tuple[str, str, str], _Tally] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, calling_aet: str, host: str, reason: str) -> None:
        now = datetime.now(timezone.utc)
        key = (host, calling_aet, reason)
        with self._lock:
            tally = self._tallies.get(key)
            if tally is None and len(self._tallies) >= self.max_sources:
                key, tally = OVERFLOW, self._tallies.get(OVERFLOW)
            if tally is not None:
                tally.count += 1
                tally.last_at = now
                return
            self._tallies[key] = _Tally(1, now, now)
        event(log, "association.refused", logging.WARNING, calling_aet=calling_aet, host=host, reason=reason)

    def flush(self) -> int:
        """Write the rows for what was counted since the last flush; returns how many rows."""
        with self._lock:
            tallies, self._tallies = self._tallies, {}
        for (host, calling_aet, reason), tally in tallies.items():
            try:
                self.write("association.rejected", outcome=4, actor=f"aet:{calling_aet}" if calling_aet else "",
                           host=host, reason=reason, count=tally.count,
                           first_at=tally.first_at.isoformat(timespec="milliseconds"),
                           last_at=tally.last_at.isoformat(timespec="milliseconds"))
            except Exception as exc:  # the database is down: say so, keep refusing
                log.error("audit.write_failed", exc_info=exc)
        return len(tallies)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cxrd-refusal-audit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()  # what was refused up to the stop is audited too

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
