"""Connections that have not yet asked for an association: they hold a slot only briefly.

pynetdicom counts every accepted connection's thread against `max_associations` from the moment
it is accepted, and that thread waits up to the ACSE timeout for an A-ASSOCIATE-RQ, even after the
peer has closed the connection or sent bytes that are no PDU. Sixteen peers that connect and go
away would then keep a PACS out for the whole ACSE timeout, and do it again after. So, per server:

- A connection closed before its A-ASSOCIATE-RQ arrived wakes its association thread at once
  (`closed`), which then ends as on an ACSE timeout and frees its slot.
- A connection that has not delivered its A-ASSOCIATE-RQ within `timeout_s` of being accepted
  (silent, trickling, or stuck in a TLS handshake) has its socket shut down by one watchdog thread;
  the blocked read returns and the above follows.
- With `per_host` set, a host with that many live connections gets its next one closed before any
  DICOM byte is read, so one host cannot take every slot.

Work per association: a few dictionary operations under a lock, in handlers pynetdicom calls on
connection open, association request and connection close.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable

from pynetdicom import evt
from pynetdicom.association import Association

from daemon.dicom import pdu_limits
from daemon.dicom.gate_rules import PER_HOST_LIMIT
from daemon.ops.logs import event

log = logging.getLogger("cxrd.scp")

# FSM states in which the DUL has not handed an A-ASSOCIATE-RQ to the association thread
# (Sta2: waiting for one; Sta13: closing after a PDU that was none).
_WAITING_STATES = frozenset({"Sta2", "Sta13"})


class ConnectionGuard:
    """Deadlines of connections not yet associated, and live connections per host, for one server."""

    def __init__(self, timeout_s: float, per_host: int = 0,
                 on_reject: Callable[[str, str, str, str], None] | None = None) -> None:
        self.timeout_s = timeout_s
        self.per_host = per_host
        self.on_reject = on_reject
        self._lock = threading.Lock()
        self._deadlines: dict[Association, float] = {}
        self._by_host: dict[str, list[Association]] = {}
        self._stopped = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="cxrd-scp-preassociation", daemon=True)

    def handlers(self) -> list[tuple[evt.EventType, Callable]]:
        """The (event, handler) pairs to bind on the server."""
        return [(evt.EVT_CONN_OPEN, self.opened), (evt.EVT_REQUESTED, self.requested),
                (evt.EVT_CONN_CLOSE, self.closed)]

    def start(self) -> None:
        self._watchdog.start()

    def stop(self) -> None:
        self._stopped.set()

    def pending(self) -> int:
        """Connections accepted whose A-ASSOCIATE-RQ has not arrived yet."""
        with self._lock:
            return len(self._deadlines)

    def opened(self, ev: evt.Event) -> None:
        """A connection was accepted (in its thread, before pynetdicom reads from it)."""
        assoc = ev.assoc
        pdu_limits.bind(assoc.dul)
        host = assoc.requestor.address
        with self._lock:
            if self.per_host:
                live = [a for a in self._by_host.get(host, ()) if a.ident is None or a.is_alive()]
                if len(live) >= self.per_host:
                    self._by_host[host] = live
                    over = True
                else:
                    self._by_host[host] = live + [assoc]
                    over = False
            else:
                over = False
            if not over:
                self._deadlines[assoc] = time.monotonic() + self.timeout_s
        if over:
            if self.on_reject:  # logged and audited there, once
                self.on_reject("", host, PER_HOST_LIMIT, "")
            _shut(assoc)

    def requested(self, ev: evt.Event) -> None:
        """The A-ASSOCIATE-RQ reached the association thread: no pre-association deadline any more."""
        with self._lock:
            self._deadlines.pop(ev.assoc, None)

    def closed(self, ev: evt.Event) -> None:
        """The transport closed (in the DUL thread). If the association thread is still waiting for
        an A-ASSOCIATE-RQ, wake it now: it ends as on an ACSE timeout instead of waiting one out."""
        assoc = ev.assoc
        host = assoc.requestor.address
        with self._lock:
            self._deadlines.pop(assoc, None)
            same_host = self._by_host.get(host)
            if same_host is not None:
                if assoc in same_host:
                    same_host.remove(assoc)
                if not same_host:
                    del self._by_host[host]
        if assoc.requestor.primitive is None and assoc.dul.state_machine.current_state in _WAITING_STATES:
            assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]  # read as "timed out"

    def _watch(self) -> None:
        interval = min(0.25, self.timeout_s / 4)
        while not self._stopped.wait(interval):
            now = time.monotonic()
            with self._lock:
                expired = [a for a, deadline in self._deadlines.items() if deadline <= now]
                for assoc in expired:
                    del self._deadlines[assoc]
            for assoc in expired:
                event(log, "association.preassociation_timeout", logging.WARNING,
                      host=assoc.requestor.address, timeout_s=self.timeout_s)
                _shut(assoc)


def _shut(assoc: Association) -> None:
    """Shut the connection down under whatever is reading it: a blocked read returns at once and
    the state machine sees the transport closed. Shuts the plain socket under TLS too, so no TLS
    state is torn down beneath a thread using it."""
    sock = assoc.dul.socket
    raw = sock.socket if sock is not None else None
    if raw is None:
        return
    try:
        socket.socket.shutdown(raw, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed
