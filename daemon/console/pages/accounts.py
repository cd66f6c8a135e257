"""Accounts (admin only): list local console accounts, add one, disable or enable it, reset its
password, set its role. Every change is audited in the change's own transaction, with the admin as
actor; directory (LDAP) people are managed in the directory, not here."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from config.loader import CONSOLE_ROLES as ROLES
from daemon.console import csrf, notices
from daemon.console.access import current_user, requires_role
from daemon.console.templating import render


def _page(request: Request, *, error: str = "", status_code: int = 200, form: dict | None = None) -> Response:
    from storage import accounts
    rt = request.app.state.runtime
    with rt.read_sessions() as s:
        rows = accounts.listing(s)
    return render(request, "accounts/accounts.html", {
        "title": "Accounts", "accounts": rows, "roles": ROLES, "error": error,
        "done": notices.shown(request, "done"), "form": form or {},
        "min_length": rt.settings.console.min_password_length,
        "ldap": rt.settings.console.ldap.enabled}, status_code=status_code)


@requires_role("admin")
def accounts_page(request: Request) -> Response:
    response = _page(request)
    admin = current_user(request)
    request.app.state.runtime.audit("users.listed", actor=admin.actor, host=admin.source)
    return response


def _change(request: Request, what: str) -> Response:
    """Apply one change from a form; a refused change re-renders the page with its one-line reason."""
    from storage import accounts
    rt = request.app.state.runtime
    admin = current_user(request)
    form = csrf.form_of(request)
    name = str(form.get("name", "")).strip()
    c = rt.settings.console
    try:
        with rt.sessions() as s, s.begin():
            if what == "add":
                role = accounts.check_role(str(form.get("role", "")))
                accounts.check_name(name)
                password = _new_password(form, c.min_password_length)
                accounts.add(s, name, role, accounts.hash_password(password, c.min_password_length))
                accounts.audited(s, rt.keys.audit_key, "users.added", actor=admin.actor, host=admin.source,
                                 user=name, role=role)
                done = f"Account {name} added with the {role} role."
            elif what in ("disable", "enable"):
                if name == admin.name and what == "disable":
                    raise accounts.AccountError("you cannot disable your own account")
                accounts.set_disabled(s, name, what == "disable")
                accounts.audited(s, rt.keys.audit_key, f"users.{what}d", actor=admin.actor, host=admin.source,
                                 user=name)
                done = f"Account {name} {what}d."
            elif what == "password":
                password = _new_password(form, c.min_password_length)
                accounts.set_password(s, name, accounts.hash_password(password, c.min_password_length))
                accounts.audited(s, rt.keys.audit_key, "users.password_reset", actor=admin.actor,
                                 host=admin.source, user=name)
                done = f"Password of {name} reset; its open sessions were signed out."
            else:
                role = accounts.check_role(str(form.get("role", "")))
                if name == admin.name and role != "admin":
                    raise accounts.AccountError("you cannot take the admin role from your own account")
                _, before = accounts.set_role(s, name, role)
                accounts.audited(s, rt.keys.audit_key, "users.role_set", actor=admin.actor, host=admin.source,
                                 user=name, role=role, previous_role=before)
                done = f"Role of {name} set to {role}."
    except accounts.AccountError as exc:
        return _page(request, error=str(exc), status_code=400,
                     form={"name": name[:64], "role": str(form.get("role", ""))[:20], "action": what})
    return RedirectResponse(f"/accounts?{notices.query(request, done=done)}", status_code=303)


def _new_password(form, min_length: int) -> str:  # noqa: ANN001
    from storage.accounts import AccountError
    password, again = str(form.get("password", "")), str(form.get("password_again", ""))
    if password != again:
        raise AccountError("the two passwords typed differ")
    if len(password) < min_length:
        raise AccountError(f"a password must be at least {min_length} characters")
    return password


@requires_role("admin")
def add_account(request: Request) -> Response:
    return _change(request, "add")


@requires_role("admin")
def disable_account(request: Request) -> Response:
    return _change(request, "disable")


@requires_role("admin")
def enable_account(request: Request) -> Response:
    return _change(request, "enable")


@requires_role("admin")
def reset_password(request: Request) -> Response:
    return _change(request, "password")


@requires_role("admin")
def set_role(request: Request) -> Response:
    return _change(request, "role")


routes: list = [
    Route("/accounts", accounts_page, methods=["GET"]),
    Route("/accounts/add", add_account, methods=["POST"]),
    Route("/accounts/disable", disable_account, methods=["POST"]),
    Route("/accounts/enable", enable_account, methods=["POST"]),
    Route("/accounts/password", reset_password, methods=["POST"]),
    Route("/accounts/role", set_role, methods=["POST"]),
]
