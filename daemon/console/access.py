"""The role check every page makes on the server: `requires_role` wraps an endpoint; not signed in ->
the sign-in page (GET) or 401; signed in with another role -> 403. A role never reaches another
role's pages or files, whatever links it follows or types. (`current_user`, `ConsoleUser` and the
address helpers are re-exported here for pages.)"""
from __future__ import annotations

import functools
from typing import Callable
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from daemon.console.cookies import client_address, is_secure, session_token
from daemon.console.csrf import form_of
from daemon.console.identity import ROLE_TITLES, ConsoleUser, current_user, current_user_or_none
from daemon.console.templating import plain_page, render

__all__ = ["ROLE_TITLES", "ConsoleUser", "client_address", "current_user", "current_user_or_none", "form_of",
           "is_secure", "requires_role", "session_token"]


def requires_role(*roles: str) -> Callable[[Callable[[Request], Response]], Callable[[Request], Response]]:
    for role in roles:
        if role not in ROLE_TITLES:
            raise ValueError(f"unknown console role {role!r}")

    def wrap(endpoint: Callable[[Request], Response]) -> Callable[[Request], Response]:
        @functools.wraps(endpoint)
        def checked(request: Request) -> Response:
            user = current_user_or_none(request)
            if user is None:
                if request.method in ("GET", "HEAD"):
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)
                return plain_page("Not signed in", "Your session has ended. Sign in again.", status_code=401)
            if user.role not in roles:
                return render(request, "errors/forbidden.html", {"needed": roles}, status_code=403)
            return endpoint(request)
        return checked
    return wrap
