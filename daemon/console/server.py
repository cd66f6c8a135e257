"""Running the console: the transport checks, then uvicorn in this process (what `cxrd console` and
its systemd unit start)."""
from __future__ import annotations

from pathlib import Path

from daemon.console.cookies import is_loopback
from daemon.errors import DaemonError
from daemon.runtime import Runtime


def check_transport(rt: Runtime) -> tuple[str, str] | None:
    """(cert, key) to serve HTTPS with, or None for plain HTTP where that is allowed; else refuse.

    Plain HTTP would send passwords and session cookies in clear, so it is allowed only on a loopback
    bind (a reverse proxy on the same host terminates TLS) or when the proxies in front are named in
    `console.trusted_proxies` (whose X-Forwarded-Proto then says https)."""
    c = rt.settings.console
    if not c.tls:
        if is_loopback(c.bind) or c.trusted_proxies:
            return None
        raise DaemonError(f"console.tls is false but console.bind {c.bind} is not a loopback address and "
                          "console.trusted_proxies is empty: plain HTTP would carry passwords in clear. Set "
                          "console.tls = true (with tls_cert/tls_key), bind to 127.0.0.1 behind a reverse "
                          "proxy, or list the proxy in console.trusted_proxies")
    missing = [p for p in (c.tls_cert, c.tls_key) if not Path(p).is_file()]
    if missing:
        raise DaemonError(f"console TLS file(s) not found: {', '.join(missing)}; run `cxrd init` to make a "
                          "self-signed pair for a first start, or set console.tls_cert and console.tls_key")
    return c.tls_cert, c.tls_key


def uvicorn_config(rt: Runtime, app, pair: tuple[str, str] | None):  # noqa: ANN001, ANN201
    """The server's settings: no Server header, no access log (it would hold query strings), bounded
    header size, request-head and keep-alive time-outs, a cap on connections and tasks, and a bound on
    how long a stop waits for open connections (a browser's idle keep-alive must not hold up
    `systemctl stop`)."""
    import uvicorn

    from daemon.console.http_limits import BoundedH11Protocol
    c = rt.settings.console
    return uvicorn.Config(
        app, host=c.bind, port=c.port, log_config=None, access_log=False, server_header=False, lifespan="on",
        http=BoundedH11Protocol, ssl_certfile=pair[0] if pair else None, ssl_keyfile=pair[1] if pair else None,
        # X-Forwarded-For/-Proto are believed only from the configured proxies, never from anyone else.
        proxy_headers=bool(c.trusted_proxies), forwarded_allow_ips=list(c.trusted_proxies) or [],
        limit_concurrency=64, timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024,
        timeout_graceful_shutdown=5)


def serve(rt: Runtime) -> int:
    import uvicorn

    from daemon.console.app import build_app
    c = rt.settings.console
    pair = check_transport(rt)
    app = build_app(rt)
    rt.audit("app.start", component="console", bind=c.bind, port=c.port, tls=pair is not None)
    config = uvicorn_config(rt, app, pair)
    scheme = "https" if pair else "http"
    print(f"cxrd: console on {scheme}://{c.bind}:{c.port}/", flush=True)
    uvicorn.Server(config).run()
    rt.audit("app.stop", component="console")
    return 0
