"""Who is signed in: `current_user_or_none` reads the session cookie, looks its token's hash up
(ending a session that has been idle or alive too long, audited as a sign-out) and caches the answer
on the request."""
from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from daemon.console.cookies import client_address, session_token

ROLE_TITLES = {"compliance": "Compliance", "operations": "Operations", "admin": "Administrator"}


@dataclass(frozen=True)
class ConsoleUser:
    name: str
    role: str     # compliance | operations | admin
    via: str      # local | ldap
    source: str   # the client's address, for audit rows

    @property
    def actor(self) -> str:
        """The audit actor string of this person."""
        return f"console:{self.name}"


_UNSET = object()


def current_user_or_none(request: Request) -> ConsoleUser | None:
    cached = getattr(request.state, "console_user", _UNSET)
    if cached is not _UNSET:
        return cached
    user = None
    token = session_token(request)
    if token:
        from storage import accounts
        rt = request.app.state.runtime
        c = rt.settings.console
        with rt.read_sessions() as s:
            view = accounts.session_by_token(s, token)
        verdict = "none" if view is None else accounts.session_verdict(
            view, idle_s=c.session_idle_s, absolute_s=c.session_absolute_s)
        if verdict in ("live", "touch"):
            if verdict == "touch":
                with rt.sessions() as s, s.begin():
                    accounts.touch_session(s, view.id)
            user = ConsoleUser(view.name, view.role, view.via, client_address(request))
        elif view is not None:  # timed out: ended here unless the sweep was first; audited once
            from daemon.console.authentication import end_session
            end_session(rt, view, verdict, client_address(request), f"{verdict} time-out")
    request.state.console_user = user
    return user


def current_user(request: Request) -> ConsoleUser:
    """The signed-in person; only valid inside an endpoint wrapped by `requires_role`."""
    user = current_user_or_none(request)
    if user is None:
        raise PermissionError("no signed-in console user on this request")
    return user
