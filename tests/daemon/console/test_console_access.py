"""Roles enforced on the server, CSRF on every form, security headers on every response."""
from __future__ import annotations

import pytest

from daemon.console.headers import CSP

PASSWORD = "correct horse battery"


@pytest.fixture()
def people(console_client):
    c = console_client()
    for name, role in (("carol", "compliance"), ("otto", "operations"), ("ada", "admin")):
        c.add_user(name, role, PASSWORD)
    return c


@pytest.mark.parametrize("name, home", [("carol", "/audit"), ("otto", "/operations"), ("ada", "/accounts")])
def test_console_each_role_lands_on_its_own_first_page(people, name, home):
    r = people.sign_in(name, PASSWORD)
    assert r.headers["location"] == home
    assert people.http.get("/").headers["location"] == home


@pytest.mark.parametrize("name", ["carol", "otto"])
def test_console_accounts_page_and_its_forms_are_403_for_other_roles(people, name):
    people.sign_in(name, PASSWORD)
    page = people.http.get("/accounts")
    assert page.status_code == 403 and "Not allowed for your role" in page.text
    assert page.headers["content-security-policy"] == CSP and page.headers["cache-control"] == "no-store"
    token = people.csrf("/accounts")  # a valid token of this person's own session (its sign-out form)
    for path in ("/accounts/add", "/accounts/disable", "/accounts/password", "/accounts/role"):
        r = people.http.post(path, data={"name": "ada", "role": "admin", "password": "x" * 20,
                                         "password_again": "x" * 20, "csrf_token": token})
        assert r.status_code == 403, path
    assert people.audit_rows("users.added", "users.disabled", "users.password_reset", "users.role_set") == []


def test_console_pages_need_a_session(people):
    r = people.http.get("/accounts")
    assert r.status_code == 303 and r.headers["location"] == "/signin?next=%2Faccounts"
    token = people.csrf()
    assert people.http.post("/accounts/add", data={"csrf_token": token}).status_code == 401


def test_console_post_without_or_with_a_wrong_csrf_token_is_403(people):
    people.sign_in("ada", PASSWORD)
    form = {"name": "eve", "role": "admin", "password": "y" * 20, "password_again": "y" * 20}
    assert people.http.post("/accounts/add", data=form).status_code == 403
    assert people.http.post("/accounts/add", data={**form, "csrf_token": "0" * 64}).status_code == 403
    assert people.http.post("/signin", data={"name": "ada", "password": PASSWORD}).status_code == 403
    assert people.http.post("/signout").status_code == 403
    assert people.audit_rows("users.added") == []
    assert people.post("/accounts/add", form, page="/accounts").status_code == 303  # with the token: done


def test_console_csrf_token_of_another_session_is_refused(console_client):
    first, second = console_client(), console_client()
    first.add_user("ada", "admin", PASSWORD)
    first.sign_in("ada", PASSWORD)
    second.sign_in("ada", PASSWORD)
    stolen = first.csrf("/accounts")
    r = second.http.post("/accounts/add", data={"name": "eve", "role": "admin", "password": "y" * 20,
                                                "password_again": "y" * 20, "csrf_token": stolen})
    assert r.status_code == 403


def test_console_security_headers_on_pages_errors_and_static_files(people):
    people.sign_in("ada", PASSWORD)
    for path, status in (("/accounts", 200), ("/signin", 303), ("/nowhere", 404),
                         ("/static/console.css", 200)):
        r = people.http.get(path)
        assert r.status_code == status, path
        h = r.headers
        assert h["content-security-policy"] == CSP
        assert "frame-ancestors 'none'" in CSP and "unsafe-inline" not in CSP and "script-src" not in CSP
        assert h["x-frame-options"] == "DENY"
        assert h["x-content-type-options"] == "nosniff"
        assert h["referrer-policy"] == "no-referrer"
        assert h["strict-transport-security"].startswith("max-age=")
        assert h["cache-control"] == ("no-cache" if path.startswith("/static/") else "no-store")


def test_console_no_hsts_and_no_secure_cookie_over_plain_http(console_client):
    c = console_client(base_url="http://testserver")
    c.add_user("ada", "admin", PASSWORD)
    r = c.sign_in("ada", PASSWORD)
    assert "strict-transport-security" not in r.headers
    assert r.headers["set-cookie"].startswith("cxrd_session=") and "Secure" not in r.headers["set-cookie"]


def test_console_pages_have_no_inline_script_or_style(people):
    people.sign_in("ada", PASSWORD)
    for path in ("/accounts", "/nowhere"):
        text = people.http.get(path).text
        assert "<script" not in text and "style=" not in text and "<style" not in text


def test_console_admin_manages_accounts_and_every_change_is_audited(people):
    people.sign_in("ada", PASSWORD)
    steps = [("/accounts/add", {"name": "eve", "role": "operations", "password": "p" * 14, "password_again": "p" * 14}),
             ("/accounts/role", {"name": "eve", "role": "compliance"}),
             ("/accounts/password", {"name": "eve", "password": "q" * 14, "password_again": "q" * 14}),
             ("/accounts/disable", {"name": "eve"}),
             ("/accounts/enable", {"name": "eve"})]
    for path, form in steps:
        r = people.post(path, form, page="/accounts")
        assert r.status_code == 303, (path, r.text[-500:])
    rows = people.audit_rows("users.added", "users.role_set", "users.password_reset", "users.disabled",
                             "users.enabled")
    assert [(r["event_type"], r["event_id"], r["actor"], r["host"], r["details"]["user"]) for r in rows] == [
        (t, "110113", "console:ada", "10.9.8.7", "eve") for t in
        ("users.added", "users.role_set", "users.password_reset", "users.disabled", "users.enabled")]
    assert rows[1]["details"] == {"user": "eve", "role": "compliance", "previous_role": "operations"}
    page = people.http.get("/accounts").text
    assert "eve" in page and "compliance" in page
    other = type(people)(people.rt)
    assert other.sign_in("eve", "q" * 14).headers["location"] == "/audit"


def test_console_accounts_page_refuses_bad_input_with_one_line(people):
    people.sign_in("ada", PASSWORD)
    r = people.post("/accounts/add", {"name": "eve", "role": "admin", "password": "short", "password_again": "short"},
                    page="/accounts")
    assert r.status_code == 400 and "at least 12 characters" in r.text
    r = people.post("/accounts/add", {"name": "bad name!", "role": "admin", "password": "p" * 14,
                                      "password_again": "p" * 14}, page="/accounts")
    assert r.status_code == 400 and "account name" in r.text
    r = people.post("/accounts/disable", {"name": "ada"}, page="/accounts")
    assert r.status_code == 400 and "your own account" in r.text
    assert people.audit_rows("users.added", "users.disabled") == []


def test_console_requires_role_guards_async_endpoints_too(people):
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from daemon.console.access import current_user, requires_role

    @requires_role("compliance")
    async def download(request):  # noqa: ANN001, ANN202
        return PlainTextResponse(f"file for {current_user(request).name}")
    people.http.app.router.routes.append(Route("/test-download", download))
    assert people.http.get("/test-download").status_code == 303
    people.sign_in("otto", PASSWORD)
    assert people.http.get("/test-download").status_code == 403
    people.http.cookies.clear()
    people.sign_in("carol", PASSWORD)
    r = people.http.get("/test-download")
    assert r.status_code == 200 and r.text == "file for carol"


def test_console_plain_http_off_loopback_is_only_through_a_tls_proxy(console_client):
    """console.tls = false is allowed off loopback when trusted_proxies is set; a request that reached
    the console directly over plain HTTP (not via the proxy's X-Forwarded-Proto: https) is refused
    before its password or cookie is read, and no sign-in form is served to it."""
    direct = console_client(base_url="http://testserver", tls=False, bind="0.0.0.0", trusted_proxies=["10.0.0.5"])
    direct.add_user("ada", "admin", PASSWORD)
    r = direct.http.get("/signin")
    assert r.status_code == 403 and "HTTPS only" in r.text and 'name="password"' not in r.text
    assert r.headers["content-security-policy"] == CSP
    assert direct.http.post("/signin", data={"name": "ada", "password": PASSWORD}).status_code == 403
    assert direct.audit_rows("console.signin", "console.signin_failed") == []
    proxied = console_client(base_url="https://testserver", tls=False, bind="0.0.0.0", trusted_proxies=["10.0.0.5"])
    assert proxied.http.get("/signin").status_code == 200
    loopback = console_client(base_url="http://testserver", tls=False, bind="127.0.0.1")
    assert loopback.http.get("/signin").status_code == 200


def test_console_accounts_page_shows_only_its_own_done_messages(people):
    """?done= is shown as a notice on the admin's page: a link crafted elsewhere must not be able to
    put its words there (content spoofing / phishing an administrator)."""
    people.sign_in("ada", PASSWORD)
    page = people.http.get("/accounts", params={"done": "Your password expired: call 555-0100"}).text
    assert "555-0100" not in page
    r = people.post("/accounts/add", {"name": "eve", "role": "operations", "password": "p" * 14,
                                      "password_again": "p" * 14}, page="/accounts")
    assert "Account eve added" in people.http.get(r.headers["location"]).text


@pytest.mark.parametrize("name, page, params", [
    ("otto", "/operations", {"error": "Call 555-0100 now", "retried": "555-0100", "study": "555-0100"}),
    ("otto", "/models", {"done": "Call 555-0100 now", "error": "Call 555-0100 now"}),
    ("ada", "/models", {"done": "Call 555-0100 now", "error": "Call 555-0100 now"})])
def test_console_notices_on_the_operations_and_model_pages_cannot_be_forged_by_a_link(people, name, page, params):
    """The service and model pages show the outcome of their own forms from the query string; only a
    notice this console signed for this session is shown, never words a crafted link carries."""
    people.sign_in(name, PASSWORD)
    r = people.http.get(page, params=params)
    assert r.status_code == 200 and "555-0100" not in r.text
