"""Refused connections and associations, audited off the accept path and aggregated per source and rule.

A refusal happens in pynetdicom's accept loop (a host not on the allow-list) or in an association's
thread (a wrong AE title, the association limit). Writing its audit row there would cost every refusal
a database commit on the path that also admits the PACS, so a host that opens connections in a loop
could stall the gate and grow the audit trail without bound. Here a refusal only counts, in memory;
a background thread writes one `association.rejected` row per (host, rule) and interval — the rule
being the gate rule(s) that refused it, in `daemon.dicom.gate_rules`' words — with how many refusals it
stands for, when the first and last came, and the calling and called AE titles the peer used. Memory
is bounded: at most `max_sources` distinct keys per interval, the rest counted together in one
overflow row, and at most `MAX_TITLES` distinct AE titles of each kind kept per key.

This is also the one place a refusal is logged: the first of a key in an interval at once, the rest
only in the row, so a host connecting in a loop cannot flood the journal either.

The HL7 port counts the same way: its refused connections (`hl7.connection_refused`) and the
messages it answers AE or AR (`report.refused`, keyed also by the ACK code, with the sending
applications named), so an allowed sender stuck resending a broken message grows the trail by a row
per second at most, not one per message.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from daemon.ops.logs import event

log = logging.getLogger("cxrd.gate")

# write(event_type, outcome=..., actor=..., host=..., **details): one audit row
AuditWrite = Callable[..., None]
OVERFLOW = ("(other hosts)", "more distinct refused sources than tracked in one interval")
MAX_TITLES = 8  # distinct calling (and called) AE titles kept per row; beyond, only counted


@dataclass
class _Tally:
    count: int
    first_at: datetime
    last_at: datetime
    calling_aets: dict[str, int] = field(default_factory=dict)
    called_aets: dict[str, int] = field(default_factory=dict)

    def add_titles(self, calling_aet: str, called_aet: str) -> None:
        for titles, title in ((self.calling_aets, calling_aet), (self.called_aets, called_aet)):
            if title in titles or len(titles) < MAX_TITLES:
                titles[title] = titles.get(title, 0) + 1


class RefusalAudit:
    """Stage: `record()` from any thread, never blocking on the database; rows written every interval."""

    def __init__(self, write: AuditWrite, interval_s: float = 1.0, max_sources: int = 256,
                 log_event: str = "association.refused", event_type: str = "association.rejected",
                 actor_prefix: str = "aet:", titles: tuple[str, str] = ("calling_aets", "called_aets"),
                 log_fields: tuple[str, str] = ("calling_aet", "called_aet"), logger: logging.Logger = log,
                 name: str = "refusal-audit"):
        self.name = name  # the stage's name in the service's health and logs
        self.log_fields, self.logger = log_fields, logger  # the first refusal's log line: its names
        self.write = write
        self.log_event = log_event  # the log line's name (the HL7 port's refusals use their own)
        self.event_type = event_type  # the audit rows' type
        self.actor_prefix = actor_prefix  # the actor of a row whose refusals all named one peer
        self.titles = titles  # the details' names of the peer's and our own names as the peer sent them
        self.interval_s = interval_s
        self.max_sources = max_sources
        self._tallies: dict[tuple, _Tally] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, calling_aet: str, host: str, reason: str, called_aet: str = "", **fixed: str) -> None:
        """One refusal: `reason` names the rule(s) that refused it; the AE titles (or HL7 application
        names) are as the peer sent them ("" where it had not said yet). `fixed` details (the ACK code
        of a refused HL7 message) are part of what is counted together, and written in the row."""
        now = datetime.now(timezone.utc)
        key = (host, reason, *sorted(fixed.items()))
        with self._lock:
            tally = self._tallies.get(key)
            if tally is None and len(self._tallies) >= self.max_sources:
                key, tally = OVERFLOW, self._tallies.get(OVERFLOW)
            if tally is not None:
                tally.count += 1
                tally.last_at = now
                tally.add_titles(calling_aet, called_aet)
                return
            tally = self._tallies[key] = _Tally(1, now, now)
            tally.add_titles(calling_aet, called_aet)
        event(self.logger, self.log_event, logging.WARNING, host=host, reason=reason,
              **{self.log_fields[0]: calling_aet, self.log_fields[1]: called_aet}, **fixed)

    def flush(self) -> int:
        """Write the rows for what was counted since the last flush; returns how many rows."""
        with self._lock:
            tallies, self._tallies = self._tallies, {}
        for (host, reason, *fixed), tally in tallies.items():
            callers = [t for t in tally.calling_aets if t]
            try:
                self.write(self.event_type, outcome=4,
                           actor=f"{self.actor_prefix}{callers[0]}"[:128] if len(callers) == 1 else "",
                           host=host, reason=reason, count=tally.count,
                           **{self.titles[0]: sorted(tally.calling_aets), self.titles[1]: sorted(tally.called_aets)},
                           first_at=tally.first_at.isoformat(timespec="milliseconds"),
                           last_at=tally.last_at.isoformat(timespec="milliseconds"), **dict(fixed))
            except Exception as exc:  # the database is down: say so, keep refusing
                log.error("audit.write_failed", exc_info=exc)
        return len(tallies)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"cxrd-{self.name}", daemon=True)
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
