"""Notices a page shows after its own redirect ("Account eve added."), carried in the query string and
signed, so that a link made by anyone else cannot put its words on a console page (content spoofing:
"?done=Your password expired, call ..."). The signature is an HMAC under the browser's own session
(or pre-sign-in) cookie, so a notice is shown only to the session whose action produced it.
"""
from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

from starlette.requests import Request

from daemon.console import cookies

MAX_NOTICE = 300


def _signature(request: Request, name: str, text: str) -> str:
    secret = cookies.secret_of(request.cookies, cookies.is_secure(request))
    message = b"console-notice\x00" + name.encode() + b"\x00" + text.encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def query(request: Request, **notices: str) -> str:
    """The query string (without "?") carrying these notices, each with its signature."""
    pairs: list[tuple[str, str]] = []
    for name, text in notices.items():
        text = text[:MAX_NOTICE]
        pairs += [(name, text), (f"{name}_sig", _signature(request, name, text))]
    return urlencode(pairs)


def shown(request: Request, name: str) -> str:
    """The notice `name` of this request's query if this console signed it for this session, else ""."""
    text = request.query_params.get(name, "")[:MAX_NOTICE]
    sig = request.query_params.get(f"{name}_sig", "")
    if text and hmac.compare_digest(sig.encode(), _signature(request, name, text).encode()):
        return text
    return ""
