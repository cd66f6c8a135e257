"""The role check every page makes on the server: `requires_role` wraps an endpoint; not signed in ->
the sign-in page (GET) or 401; signed in with another role -> 403. A role never reaches another
role's pages or files, whatever links it follows or types. (`current_user`, `ConsoleUser` and the
address helpers are re-exported here for pages.)"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable
from urllib.parse import quote

from starlette.requests import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from daemon.console.cookies import client_address, is_secure, session_token
from daemon.console.csrf import form_of
from daemon.console.identity import ROLE_TITLES, ConsoleUser, current_user, current_user_or_none
from daemon.console.templating import plain_page, render

Endpoint = Callable[[Request], Any]  # returns a Response, or (async) a coroutine of one

__all__ = ["ROLE_TITLES", "ConsoleUser", "client_address", "current_user", "current_user_or_none", "form_of",
           "is_secure", "requires_role", "session_token"]


def _audit_denied(request: Request, user: ConsoleUser) -> None:
    """A signed-in person tried another role's page or form: a security alert in the trail (the path
    is one of the console's own routes; details are JSON, so nothing typed into it can break a row)."""
    try:
        request.app.state.runtime.audit("console.access_denied", outcome=4, actor=user.actor, host=user.source,
                                        method=request.method, path=request.url.path[:200], role=user.role)
    except Exception as exc:  # the refusal stands whether or not its row could be written
        logging.getLogger("cxrd.console").error("audit.write_failed", exc_info=exc)


def requires_role(*roles: str) -> Callable[[Endpoint], Endpoint]:
    """Let only signed-in people with one of `roles` reach the endpoint (sync, or async)."""
    for role in roles:
        if role not in ROLE_TITLES:
            raise ValueError(f"unknown console role {role!r}")

    def refusal(request: Request) -> Response | None:
        user = current_user_or_none(request)
        if user is None:
            if request.method in ("GET", "HEAD"):
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)
            return plain_page("Not signed in", "Your session has ended. Sign in again.", status_code=401)
        if user.role not in roles:
            _audit_denied(request, user)
            return render(request, "errors/forbidden.html", {"needed": roles}, status_code=403)
        return None

    def wrap(endpoint: Endpoint) -> Endpoint:
        if inspect.iscoroutinefunction(endpoint):
            @functools.wraps(endpoint)
            async def checked_async(request: Request) -> Response:
                refused = await run_in_threadpool(refusal, request)  # a database read: off the event loop
                return refused if refused is not None else await endpoint(request)
            checked_async.console_roles = frozenset(roles)  # type: ignore[attr-defined]
            return checked_async

        @functools.wraps(endpoint)
        def checked(request: Request) -> Response:
            refused = refusal(request)
            return refused if refused is not None else endpoint(request)
        # What the route guard test reads: every route but the public ones must carry it.
        checked.console_roles = frozenset(roles)  # type: ignore[attr-defined]
        return checked
    return wrap
