"""Sign-in, sign-out and the start page (which sends each person to their role's first page)."""
from __future__ import annotations

import asyncio
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from daemon.console import cookies, csrf, navigation
from daemon.console.access import client_address, current_user_or_none, is_secure, session_token
from daemon.console.templating import render


def _safe_next(target: str) -> str:
    """Only a path on this console (never //host or a scheme), so sign-in cannot redirect elsewhere."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target and len(target) < 2000:
        return target
    return "/"


def home(request: Request) -> Response:
    user = current_user_or_none(request)
    if user is None:
        return RedirectResponse("/signin", status_code=303)
    return RedirectResponse(navigation.home_for(user.role), status_code=303)


def signin_page(request: Request) -> Response:
    user = current_user_or_none(request)
    if user is not None:
        return RedirectResponse(navigation.home_for(user.role), status_code=303)
    rt = request.app.state.runtime
    return render(request, "signin/signin.html", {
        "title": "Sign in", "next": _safe_next(request.query_params.get("next", "/")), "error": "",
        "name": "", "ldap": rt.settings.console.ldap.enabled})


# With directory sign-in on, a refusal for a local account name (argon2 only) would come back sooner
# than one for any other name (a directory search first): every refusal takes at least this long, so
# the time says nothing about which names exist here (unless the directory itself is slower than this).
REFUSAL_FLOOR_S = 1.0


async def signin_submit(request: Request) -> Response:
    started = time.monotonic()
    response = await run_in_threadpool(_submit, request)
    if response.status_code == 401 and request.app.state.runtime.settings.console.ldap.enabled:
        await asyncio.sleep(max(0.0, REFUSAL_FLOOR_S - (time.monotonic() - started)))  # not a pool thread
    return response


def _submit(request: Request) -> Response:
    from daemon.console.authentication import sign_in
    rt = request.app.state.runtime
    form = csrf.form_of(request)
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "/")))
    result = sign_in(rt, name, password, client_address(request))
    if result.token is None:
        return render(request, "signin/signin.html", {
            "title": "Sign in", "next": target, "error": result.message, "name": name[:64],
            "ldap": rt.settings.console.ldap.enabled}, status_code=401)
    previous = session_token(request)
    if previous:  # a session this browser still held (another person's, on a shared workstation): ended
        from daemon.console.authentication import sign_out
        sign_out(rt, previous, client_address(request))
    if target == "/":
        target = navigation.home_for(result.role)
    response = RedirectResponse(target, status_code=303)
    secure = is_secure(request)
    response.set_cookie(cookies.cookie_name(cookies.SESSION_COOKIE, secure), result.token, httponly=True,
                        secure=secure, samesite="strict", path="/")
    response.delete_cookie(cookies.cookie_name(cookies.PRE_COOKIE, secure), path="/", secure=secure, httponly=True,
                           samesite="strict")
    return response


def signout(request: Request) -> Response:
    from daemon.console.authentication import sign_out
    token = session_token(request)
    if token:
        sign_out(request.app.state.runtime, token, client_address(request))
    secure = is_secure(request)
    response = RedirectResponse("/signin?signed_out=1", status_code=303)
    if secure:  # browsers honour it only from a secure origin: drop anything this console left behind
        response.headers["Clear-Site-Data"] = '"cache", "cookies", "storage"'
    response.delete_cookie(cookies.cookie_name(cookies.SESSION_COOKIE, secure), path="/", secure=secure, httponly=True,
                           samesite="strict")
    return response


routes: list = [
    Route("/", home, methods=["GET"]),
    Route("/signin", signin_page, methods=["GET"]),
    Route("/signin", signin_submit, methods=["POST"]),
    Route("/signout", signout, methods=["POST"]),
]
