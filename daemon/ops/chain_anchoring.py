"""Anchor the audit chain's head outside the database, and notice when the chain goes backwards.

Every `interval_s` (and at start and stop) the head (seq, hash) is appended to
`{state_dir}/audit-anchors.jsonl` when it moved, and logged as `event=audit.anchor` so the journal,
and whatever forwards it, holds a copy no database user can reach. A head below the last anchor, or
the anchored row's hash changed at the same seq, means rows were removed or replaced: that is logged
as an error once per occurrence and `cxrd_audit_chain_behind_anchor` reads 1 until the head is past
the anchor again. Nothing is anchored while it reads 1, so the evidence stays in the file.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from daemon.ops.logs import event
from storage import audit_anchor

log = logging.getLogger("cxrd.audit")


class ChainAnchoring:
    """Stage: anchors the audit head periodically; `behind_anchor` for the metric."""

    name = "audit-anchor"

    def __init__(self, sessions: sessionmaker[Session], audit_key: bytes, state_dir: Path,
                 interval_s: float = 60.0):
        self.sessions, self.audit_key, self.interval_s = sessions, audit_key, interval_s
        self.path = Path(state_dir) / audit_anchor.FILE_NAME
        self.behind_anchor = False
        self._last: audit_anchor.Anchor | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._last, rejected = audit_anchor.last(self.path, self.audit_key)
        if rejected:
            event(log, "audit.anchor_lines_rejected", logging.WARNING, lines=rejected, file=str(self.path))
        self.anchor_once()
        self._thread = threading.Thread(target=self._run, name="cxrd-audit-anchor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.anchor_once()
            except Exception as exc:  # the database is down: try again next interval
                log.error("audit.anchor_failed", exc_info=exc)

    def anchor_once(self) -> None:
        with self.sessions() as session:
            head = audit_anchor.current_head(session)
        last = self._last
        if last is not None and (head is None or head[0] < last.seq
                                 or (head[0] == last.seq and head[1] != last.hash)):
            if not self.behind_anchor:
                event(log, "audit.chain_regressed", logging.ERROR, anchored_seq=last.seq,
                      head_seq=head[0] if head else 0, hint="run `cxrd audit verify`")
            self.behind_anchor = True
            return
        self.behind_anchor = False
        if head is not None and (last is None or head != last.head()):
            self._last = audit_anchor.append(self.path, self.audit_key, *head)
            event(log, "audit.anchor", seq=head[0], hash=head[1])

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.anchor_once()  # the last rows of this run (app.stop comes after; the next start anchors it)
        except Exception as exc:
            log.error("audit.anchor_failed", exc_info=exc)

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
