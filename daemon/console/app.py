"""The console's ASGI application: routes from every page module, static files, and the middleware
every request passes (security headers outermost, then CSRF)."""
from __future__ import annotations

import asyncio
import contextlib
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from daemon.console.csrf import CSRFMiddleware
from daemon.console.headers import SecurityHeadersMiddleware

if TYPE_CHECKING:
    from daemon.runtime import Runtime

#: Page modules of daemon/console/pages/, each with a module-level `routes` list.
PAGES = ("signin", "accounts", "audit", "operations", "models", "watch")
STATIC = Path(__file__).with_name("static")


def build_app(rt: Runtime) -> Starlette:
    routes: list = []
    for name in PAGES:
        routes += importlib.import_module(f"daemon.console.pages.{name}").routes
    routes.append(Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"))
    app = Starlette(routes=routes,
                    middleware=[Middleware(SecurityHeadersMiddleware), Middleware(CSRFMiddleware)],
                    exception_handlers={HTTPException: _http_error, Exception: _crashed},
                    lifespan=_lifespan)
    app.state.runtime = rt
    return app


SWEEP_INTERVAL_S = 60.0


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    """While serving: every minute, end (and audit) sessions that timed out unused, or that the
    directory no longer backs."""
    task = asyncio.create_task(_sweep_sessions(app.state.runtime))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _sweep_sessions(rt: Runtime) -> None:
    import functools
    import logging

    from starlette.concurrency import run_in_threadpool

    from daemon.console import directory_sessions
    from daemon.console.authentication import expire_sessions
    confirmed: dict = {}  # directory session id -> when the directory last confirmed its role
    while True:
        for sweep in (expire_sessions, functools.partial(directory_sessions.recheck, confirmed=confirmed)):
            try:
                await run_in_threadpool(sweep, rt)
            except Exception as exc:  # the database may be briefly away; the next round tries again
                logging.getLogger("cxrd.console").warning("console.session_sweep_failed", exc_info=exc)
        await asyncio.sleep(SWEEP_INTERVAL_S)


def _http_error(request: Request, exc: Exception) -> Response:
    from daemon.console.templating import plain_page, render
    status = getattr(exc, "status_code", 500)
    if status == 404:
        return render(request, "errors/not_found.html", status_code=404)
    if status == 405:
        return plain_page("Not allowed", "This address does not accept that kind of request.", 405)
    return plain_page("Request refused", str(getattr(exc, "detail", "")) or "The request was refused.", status)


def _crashed(request: Request, exc: Exception) -> Response:
    """Log the failure's type only (a message could carry data), answer with a plain page, no traceback."""
    import logging

    from daemon.console.templating import plain_page
    logging.getLogger("cxrd.console").error("console.request_failed", exc_info=exc,
                                            extra={"cxrd_fields": {"path": request.url.path[:200]}})
    return plain_page("Something went wrong", "The console could not complete this request; it has been "
                      "logged. Try again, or tell your administrator.", 500)
