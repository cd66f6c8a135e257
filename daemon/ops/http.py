"""/healthz, /readyz and /metrics on a small threaded HTTP server (127.0.0.1 by default).

/healthz: the process and its stages are alive (what a watchdog or liveness probe asks).
/readyz:  the database answers, the DICOM port is bound and disk is above the floor (what a load
          balancer asks before sending images). Both answer 200 or 503 with a one-line reason.
/metrics: Prometheus text format.

Whoever can reach the port is not trusted to behave: a connection that sends nothing, or half a
request, is closed after `request_timeout_s`, and at most `max_connections` are served at once (one
thread each); connections beyond that are closed as soon as they are accepted, so idle or slow clients
cannot pile up threads and memory in the process that holds the keys.
"""
from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from daemon.ops.logs import event

log = logging.getLogger("cxrd.http")

Check = Callable[[], tuple[bool, str]]


class _BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a cap on connections served at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int):
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:  # noqa: ANN001 - socketserver API
        if not self._slots.acquire(blocking=False):
            event(log, "http.connection_refused", logging.WARNING, reason="connection limit")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # noqa: ANN001
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class HttpEndpoint:
    name = "http"

    def __init__(self, bind: str, port: int, *, health: Check, ready: Check, metrics: Callable[[], bytes],
                 request_timeout_s: float = 10.0, max_connections: int = 32):
        self.bind, self.port = bind, port
        self.request_timeout_s, self.max_connections = request_timeout_s, max_connections
        self.health, self.ready, self.metrics = health, ready, metrics
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            timeout = endpoint.request_timeout_s  # socket timeout for reading the request

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, endpoint.metrics(), "text/plain; version=0.0.4; charset=utf-8")
                elif path in ("/healthz", "/readyz"):
                    ok, reason = (endpoint.health if path == "/healthz" else endpoint.ready)()
                    self._send(200 if ok else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # noqa: ANN002 - quiet: scrapes every few seconds
                pass

        try:
            self.server = _BoundedServer((self.bind, self.port), Handler, self.max_connections)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen for HTTP on {self.bind}:{self.port}: {exc.strerror}") from None
        self.thread = threading.Thread(target=self.server.serve_forever, name="cxrd-http", daemon=True)
        self.thread.start()
        event(log, "http.started", bind=self.bind, port=self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def healthy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()
