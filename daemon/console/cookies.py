"""The console's cookies and the values derived from them: the session cookie (its token), the
pre-sign-in cookie (so the sign-in form has a CSRF token too), and the CSRF token itself.

Under TLS the `__Host-` prefix makes the browser refuse a cookie unless it is Secure, host-only and
for path /, so a sibling host cannot plant one. The CSRF token is an HMAC of the cookie's secret
value: it needs no storage, and it changes whenever the session does.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress

from starlette.requests import Request

FIELD = "csrf_token"
SESSION_COOKIE = "cxrd_session"
PRE_COOKIE = "cxrd_pre"


def is_loopback(bind: str) -> bool:
    """Whether the console's bind address is loopback only (plain HTTP is then for a local proxy)."""
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def is_secure(request: Request) -> bool:
    return request.url.scheme == "https"


UNKNOWN_ADDRESS = "(not an address)"


def client_address(request: Request) -> str:
    """The client's address (the one a trusted proxy names, see `console.trusted_proxies`), as a
    normalised IP address. Behind a proxy it comes from X-Forwarded-For, which can hold any text the
    proxy passed on: anything that is not an address is one placeholder, so it cannot be written into
    audit rows, nor dodge the per-address lock-out by changing at every attempt."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return UNKNOWN_ADDRESS
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:10.1.2.3 is 10.1.2.3, one lock-out subject
    return str(mapped or address)


def cookie_name(base: str, secure: bool) -> str:
    return f"__Host-{base}" if secure else base


def session_token(request: Request) -> str:
    return request.cookies.get(cookie_name(SESSION_COOKIE, is_secure(request)), "")


def token_for(secret: str) -> str:
    return hmac.new(secret.encode("utf-8", "replace"), b"cxrd-console-csrf", hashlib.sha256).hexdigest()


def secret_of(cookies: dict[str, str], secure: bool) -> str:
    """The secret the CSRF token derives from: the session cookie, else the pre-sign-in cookie."""
    return (cookies.get(cookie_name(SESSION_COOKIE, secure))
            or cookies.get(cookie_name(PRE_COOKIE, secure)) or "")
