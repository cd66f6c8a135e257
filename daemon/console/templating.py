"""Rendering pages: one Jinja2 environment, autoescaped, every page extending `base.html`.

`render` adds what every page needs: the signed-in person and their menu (`navigation`), and
`csrf_field()` for forms. A person who has no session yet gets a pre-sign-in cookie here, so the
sign-in form has a CSRF token too.
"""
from __future__ import annotations

import functools
import secrets
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from daemon.console import cookies, navigation
from daemon.console.identity import ROLE_TITLES, current_user_or_none

TEMPLATES = Path(__file__).with_name("templates")


@functools.cache
def environment():  # noqa: ANN201
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    return env


def render(request: Request, template: str, context: dict[str, Any] | None = None,
           status_code: int = 200) -> HTMLResponse:
    user = current_user_or_none(request)
    secure = cookies.is_secure(request)
    secret = cookies.secret_of(request.cookies, secure)
    new_pre = ""
    if not secret:
        new_pre = secret = secrets.token_urlsafe(32)
    token = cookies.token_for(secret)
    ctx = {
        "request": request,
        "user": user,
        "role_title": ROLE_TITLES.get(user.role, "") if user else "",
        "nav": navigation.entries_for(user.role) if user else [],
        "csrf_token": token,
        "csrf_field": lambda: Markup(f'<input type="hidden" name="{cookies.FIELD}" value="{escape(token)}">'),
        **(context or {}),
    }
    html = environment().get_template(template).render(ctx)
    response = HTMLResponse(html, status_code=status_code)
    if new_pre:
        response.set_cookie(cookies.cookie_name(cookies.PRE_COOKIE, secure), new_pre, httponly=True, secure=secure,
                            samesite="strict", path="/")
    return response


def plain_page(title: str, message: str, status_code: int) -> HTMLResponse:
    """A page that needs no request (refusals from middleware); still the console's look."""
    html = environment().get_template("errors/plain.html").render(
        {"title": title, "message": message, "user": None, "nav": [], "role_title": ""})
    return HTMLResponse(html, status_code=status_code)
