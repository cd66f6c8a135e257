"""Security headers on every response: no inline script or style (CSP), no framing, no MIME sniffing,
no referrer leaks, pages never cached, HSTS under TLS. And no page at all over plain HTTP that did
not come through a TLS-terminating proxy, unless the console listens on loopback only."""
from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
COMMON = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
HSTS = "max-age=31536000"


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")
        secure = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in COMMON.items():
                    headers[name] = value
                # Pages may show audit rows: never kept by the browser or a proxy. Style sheets may be.
                headers["Cache-Control"] = "no-cache" if static else "no-store"
                if not static:
                    headers["Pragma"] = "no-cache"
                if secure:
                    headers["Strict-Transport-Security"] = HSTS
            await send(message)

        if not secure and not _plain_http_allowed(scope):
            await _https_only(scope, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _plain_http_allowed(scope: Scope) -> bool:
    """Plain HTTP is for a loopback bind (the proxy on the same host) only. With console.tls = false on
    another address (allowed when console.trusted_proxies is set), a request that reached us directly,
    not through a proxy saying X-Forwarded-Proto: https, would carry a password in clear."""
    from daemon.console.cookies import is_loopback
    app = scope.get("app")
    rt = getattr(getattr(app, "state", None), "runtime", None)
    return rt is None or is_loopback(rt.settings.console.bind)


async def _https_only(scope: Scope, send: Send) -> None:
    from daemon.console.templating import plain_page
    response = plain_page("HTTPS only", "This console is reached over HTTPS, through the hospital's reverse "
                          "proxy. Plain HTTP is refused so that passwords are never sent in clear.", 403)

    async def nothing() -> Message:
        return {"type": "http.disconnect"}
    await response(scope, nothing, send)
