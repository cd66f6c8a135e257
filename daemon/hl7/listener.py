"""The HL7 MLLP port: who may connect, how many at once, how long, how much; fail closed.

Gate rules, in order, before a byte of the peer's is read: the source address must be in
`hl7.listen.allowed_hosts`; fewer than `max_connections` connections may be open, and fewer than
`max_connections_per_host` from that address. A refused connection is closed at once and reported
(audited off the accept path by the caller). With TLS the handshake must finish within
`read_timeout_s`, and with `require_client_cert` a client without a certificate from `ca` is
refused by the handshake. Then frames are read one at a time (`framing.FrameReader`: bounded size,
read and idle time-outs) and each is answered before the next is read, so a peer has at most one
message in memory. An oversize frame is answered AR and the connection closed: the rest of it is
read and thrown away for at most a few seconds (so the peer can read the AR) in a fixed small
buffer, never kept.
"""
from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import time
from typing import Protocol

from config.schema import Hl7Listen
from daemon.hl7.framing import FrameReader, FrameTimeout, FrameTooLarge, FramingError, frame
from daemon.ops.listening import host_allowed, parse_networks, server_tls_context
from daemon.ops.logs import event

log = logging.getLogger("cxrd.hl7")

HOST_NOT_ALLOWED = "host not allowed"                         # hl7.listen.allowed_hosts
CONNECTION_LIMIT = "connection limit reached"                 # hl7.listen.max_connections
PER_HOST_LIMIT = "per-host connection limit reached"          # hl7.listen.max_connections_per_host
LINGER_S = 3.0
LINGER_BYTES = 64 * 1024 * 1024


class Intake(Protocol):
    def handle(self, raw: bytes, host: str) -> bytes: ...
    def too_large(self, head: bytes, host: str, limit: int) -> bytes: ...
    def refused_connection(self, host: str, reason: str) -> None: ...


class Hl7Listener:
    """A stage: `start` binds (OSError if it cannot), `stop` closes the port and waits for the
    connections' current messages."""
    name = "hl7"

    def __init__(self, cfg: Hl7Listen, intake: Intake):
        self.cfg = cfg
        self.intake = intake
        self.networks = parse_networks(cfg.allowed_hosts)
        self.tls = server_tls_context(cfg.tls) if cfg.tls.enabled else None
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._idle: set[socket.socket] = set()  # connections between messages (or mid-frame): closed at stop
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.port = cfg.port

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.cfg.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.cfg.bind, self.cfg.port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="cxrd-hl7-accept", daemon=True)
        self._thread.start()
        event(log, "hl7.listening", bind=self.cfg.bind, port=self.port, tls=self.tls is not None)

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop accepting; close connections waiting for (or in the middle of) a message at once
        (nothing of theirs was acknowledged, so the RIS sends it again); let those whose message is
        being recorded finish and send their ACK, for up to `drain_s`."""
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(2.0)
        deadline = time.monotonic() + drain_s
        while True:
            with self._lock:
                for conn in list(self._idle):
                    try:  # the descriptor's own shutdown (under TLS too): the reading thread sees EOF
                        socket.socket.shutdown(conn, socket.SHUT_RDWR)
                    except OSError:
                        pass
                if not self._active or time.monotonic() > deadline:
                    break
            time.sleep(0.05)

    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        while not self._stop.is_set():
            try:
                if not sel.select(0.5):
                    continue
                conn, addr = self._sock.accept()
            except OSError:
                if self._stop.is_set():
                    break
                time.sleep(0.05)  # e.g. EMFILE: do not spin
                continue
            host = str(addr[0])
            reason = self._admit(host)
            if reason is not None:
                _close(conn)
                self._report_refusal(host, reason)
                continue
            threading.Thread(target=self._serve, args=(conn, host), name="cxrd-hl7-conn", daemon=True).start()
        sel.close()

    def _admit(self, host: str) -> str | None:
        if not host_allowed(host, self.networks):
            return HOST_NOT_ALLOWED
        with self._lock:
            if sum(self._active.values()) >= self.cfg.max_connections:
                return CONNECTION_LIMIT
            per_host = self.cfg.max_connections_per_host
            if per_host and self._active.get(host, 0) >= per_host:
                return PER_HOST_LIMIT
            self._active[host] = self._active.get(host, 0) + 1
        return None

    def _report_refusal(self, host: str, reason: str) -> None:
        try:
            self.intake.refused_connection(host, reason)
        except Exception as exc:
            log.error("hl7.refusal_report_failed", exc_info=exc)

    def _serve(self, conn: socket.socket, host: str) -> None:
        try:
            self._converse(conn, host)
        except Exception as exc:  # a connection thread must end quietly, never with a traceback of peer data
            event(log, "hl7.connection_failed", logging.WARNING, host=host, error=type(exc).__name__)
        finally:
            with self._lock:
                self._idle.discard(conn)
                self._active[host] -= 1
                if not self._active[host]:
                    del self._active[host]
            _close(conn)

    def _converse(self, conn: socket.socket, host: str) -> None:
        cfg = self.cfg
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            conn.settimeout(cfg.read_timeout_s)
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                event(log, "hl7.tls_failed", logging.WARNING, host=host,
                      reason=getattr(exc, "reason", None) or type(exc).__name__)
                return
        reader = FrameReader(conn, cfg.max_message_bytes, cfg.idle_timeout_s, cfg.read_timeout_s)
        while True:
            with self._lock:
                if self._stop.is_set():
                    return
                self._idle.add(conn)
            try:
                raw = reader.next_frame()
            except FrameTooLarge as exc:
                event(log, "hl7.message_too_large", logging.WARNING, host=host, limit=cfg.max_message_bytes)
                conn.sendall(frame(self.intake.too_large(exc.head, host, cfg.max_message_bytes)))
                _linger(conn)
                return
            except FramingError as exc:
                event(log, "hl7.framing_error", logging.WARNING, host=host, reason=str(exc))
                return
            except FrameTimeout:
                event(log, "hl7.read_timeout", logging.WARNING, host=host, seconds=cfg.read_timeout_s)
                return
            except socket.timeout:
                event(log, "hl7.idle_timeout", host=host, seconds=cfg.idle_timeout_s)
                return
            except (OSError, ssl.SSLError):
                return
            finally:
                with self._lock:
                    self._idle.discard(conn)
            if raw is None:
                return
            conn.sendall(frame(self.intake.handle(raw, host)))


def _linger(conn: socket.socket) -> None:
    """Stop sending, then read and drop what the peer still sends (bounded), so it can read our AR
    instead of a connection reset."""
    try:
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        return
    deadline, dropped = time.monotonic() + LINGER_S, 0
    buf = bytearray(65536)
    while dropped < LINGER_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            conn.settimeout(left)
            n = conn.recv_into(buf)
        except (OSError, ssl.SSLError):
            break
        if not n:
            break
        dropped += n


def _close(conn: socket.socket) -> None:
    try:
        conn.close()
    except OSError:
        pass
