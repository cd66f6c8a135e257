"""Time bounds uvicorn does not give: a request's head, and a form's body, must arrive in time.

uvicorn (h11) times out only a keep-alive connection *after* a response; a connection that never
finishes its request line and headers is kept for ever, and each one counts against
`limit_concurrency`, so a few dozen silent sockets (slowloris) made every other request a 503.
`BoundedH11Protocol` closes a connection whose request head is not complete within
`REQUEST_HEAD_TIMEOUT_S` of the connection (or of the previous response). The body is bounded by the
CSRF middleware, which reads it within `BODY_TIMEOUT_S`.
"""
from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0


class BoundedH11Protocol(H11Protocol):
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(REQUEST_HEAD_TIMEOUT_S, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        """No request in progress (none yet, or the last one answered) and no complete head since."""
        self._head_deadline = None
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()
