"""Verifying the audit chain from the console: one run at a time, in a background thread, with its
progress readable by the page that refreshes itself while it runs.

The run is what `cxrd audit verify` does (`storage.chain_check.verify`, against the last anchor
outside the database), and it is recorded the same way: an `audit.verify` event (110101) whose
details are the report, with the console user as actor and their address as host. The page's "last
verification" is read back from those events, so a verification run from the CLI shows there too.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from daemon.runtime import Runtime


@dataclass(frozen=True)
class JobState:
    """A snapshot of the current (or last) run in this console process."""
    running: bool = False
    started_at: str = ""
    finished_at: str = ""
    actor: str = ""
    checked: int = 0
    total: int = 0
    result: dict[str, Any] | None = None
    error: str = ""
    recorded_seq: int | None = None

    @property
    def percent(self) -> int:
        if not self.total:
            return 100 if not self.running else 0
        return min(100, self.checked * 100 // self.total)


@dataclass
class VerifyJob:
    """Holds the one run of a console process (a second start while it runs joins the first)."""
    state: JobState = field(default_factory=JobState)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> JobState:
        with self.lock:
            return self.state

    def start(self, rt: Runtime, *, actor: str, host: str, batch: int = 20000) -> bool:
        """Start a run unless one is running; True when this call started it."""
        from storage import audit_query
        with self.lock:
            if self.state.running:
                return False
            with rt.read_sessions() as s:
                total = audit_query.head_seq(s)
            self.state = JobState(running=True, started_at=_now(), actor=actor, total=total)
        threading.Thread(target=self._run, args=(rt, actor, host, batch), name="cxrd-console-verify",
                         daemon=True).start()
        return True

    def _progress(self, rows: int) -> None:
        with self.lock:
            self.state = replace(self.state, checked=rows)

    def _run(self, rt: Runtime, actor: str, host: str, batch: int) -> None:
        from storage import audit, chain_check
        try:
            with rt.read_sessions() as s:
                report, result = chain_check.verify(s, rt.keys.audit_key, rt.state_dir,
                                                    progress=self._progress, batch=batch)
            with rt.sessions() as session, session.begin():
                row = audit.append(session, rt.keys.audit_key, event_type="audit.verify",
                                   outcome=0 if report.ok else 12, actor=actor, host=host, details=result)
            final = dict(running=False, finished_at=_now(), checked=report.rows, result=result,
                         recorded_seq=row.seq)
        except Exception as exc:  # noqa: BLE001 - shown on the page; a run that fails records nothing
            final = dict(running=False, finished_at=_now(), result=None,
                         error=f"verification could not run ({type(exc).__name__})")
        with self.lock:
            self.state = replace(self.state, **final)

    def wait(self, timeout: float = 30.0) -> JobState:
        """Block until the run finishes (tests and the CLI-like paths); returns the final state."""
        import time
        deadline = time.monotonic() + timeout
        while self.snapshot().running and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.snapshot()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
