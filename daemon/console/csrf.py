"""CSRF protection: every state-changing request must carry, in form field `csrf_token`, a token
derived from the browser's own session (or pre-sign-in) cookie; otherwise it is refused with 403
before any endpoint runs.

The token is an HMAC of the cookie's secret value, so it needs no storage and changes whenever the
session does (at sign-in the session token is new, so is the CSRF token). A cross-site page can make
the browser send the cookie (SameSite=Strict already stops that in current browsers) but can never
read it, so it cannot compute the token. The body is read here, bounded in size and time, and
replayed to the endpoint.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Awaitable, Callable

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.console import http_limits
from daemon.console.cookies import FIELD, secret_of, token_for
from daemon.console.templating import plain_page

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_FORM_BYTES = 256 * 1024  # console forms are a few fields; a larger body is refused unread
STATE_KEY = "cxrd_console_form"


class CSRFMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        try:  # a body trickled in slowly would hold a connection (and a concurrency slot) for ever
            body = await asyncio.wait_for(_read_bounded(receive), http_limits.BODY_TIMEOUT_S)
        except asyncio.TimeoutError:
            await PlainTextResponse("request body not received in time", status_code=408,
                                    headers={"Connection": "close"})(scope, _no_receive, send)
            return
        if body is None:
            await PlainTextResponse("request body too large", status_code=413)(scope, receive, send)
            return
        replay = _replayer(body)
        request = Request(scope, replay)
        secret = secret_of(request.cookies, scope.get("scheme") == "https")
        sent = ""
        fields: list[tuple[str, str]] = []
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            try:
                async with request.form(max_files=4, max_fields=200) as form:
                    value = form.get(FIELD)
                    sent = value if isinstance(value, str) else ""
                    fields = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
            except Exception:  # a malformed body: refused below like a missing token
                sent = ""
        if not secret or not sent or not hmac.compare_digest(sent.encode(), token_for(secret).encode()):
            await _forbidden(scope, send)
            return
        # The text fields, parsed once here, for sync endpoints (`form_of`); the body is replayed too.
        scope.setdefault("state", {})[STATE_KEY] = FormData(fields)
        await self.app(scope, _replayer(body), send)


def form_of(request: Request) -> FormData:
    """The text fields of a POST that passed the CSRF check (empty for other requests)."""
    return request.scope.get("state", {}).get(STATE_KEY) or FormData()


async def _read_bounded(receive: Receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replayer(body: bytes) -> Callable[[], Awaitable[Message]]:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return receive


async def _forbidden(scope: Scope, send: Send) -> None:
    response = plain_page("Request refused", "This form has expired or did not come from this console "
                          "(missing or wrong security token). Go back, reload the page and try again.",
                          status_code=403)
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
