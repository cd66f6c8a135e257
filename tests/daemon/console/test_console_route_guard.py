"""Every route of the console app, enumerated from the app itself (so a page added later is covered
without anyone remembering to list it): the public ones are exactly those below; every other one is
wrapped by `requires_role`, answers 403 to each other role and sends a signed-out person to sign in
(GET) or 401 (POST); and every POST, public or not, is refused without the CSRF token."""
from __future__ import annotations

import re

import pytest
from starlette.routing import Mount, Route

from daemon.console.app import build_app
from daemon.console.identity import ROLE_TITLES

PASSWORD = "correct horse battery"
PUBLIC = {("/", "GET"), ("/signin", "GET"), ("/signin", "POST"), ("/signout", "POST")}
PEOPLE = {"compliance": "carol", "operations": "otto", "admin": "ada"}
HOME = {"compliance": "/audit", "operations": "/operations", "admin": "/accounts"}


def concrete(path: str) -> str:
    """A path with its parameters filled in ({seq:int} -> 1, {version} -> v1)."""
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: "1" if m.group(2) == ":int" else "v1", path)


def all_routes(rt) -> list[tuple[str, str, object]]:  # noqa: ANN001
    out = []
    for route in build_app(rt).routes:
        if isinstance(route, Mount):
            assert route.path == "/static", f"unexpected mount {route.path}: guard it and list it here"
            continue
        assert isinstance(route, Route), route
        for method in sorted(route.methods - {"HEAD"}):
            out.append((route.path, method, route.endpoint))
    return out


@pytest.fixture()
def people(console_client):
    c = console_client()
    for role, name in PEOPLE.items():
        c.add_user(name, role, PASSWORD)
    return c


def test_console_every_route_is_public_by_name_or_role_checked(people):
    routes = all_routes(people.rt)
    assert PUBLIC <= {(p, m) for p, m, _ in routes}
    unguarded = [f"{m} {p}" for p, m, endpoint in routes
                 if (p, m) not in PUBLIC and not getattr(endpoint, "console_roles", None)]
    assert unguarded == [], "routes without requires_role"
    for _, _, endpoint in routes:
        assert set(getattr(endpoint, "console_roles", ())) <= set(ROLE_TITLES)


def test_console_every_guarded_route_refuses_the_signed_out(people):
    token = people.csrf()  # the pre-sign-in cookie's token: CSRF passes, the role check must refuse
    for path, method, endpoint in all_routes(people.rt):
        if (path, method) in PUBLIC:
            continue
        url = concrete(path)
        if method == "GET":
            r = people.http.get(url)
            assert r.status_code == 303 and r.headers["location"].startswith("/signin?next="), url
        else:
            r = people.http.request(method, url, data={"csrf_token": token})
            assert r.status_code == 401, (method, url, r.status_code)


@pytest.mark.parametrize("role", sorted(PEOPLE))
def test_console_every_route_of_another_role_is_403(people, role):
    people.sign_in(PEOPLE[role], PASSWORD)
    token = people.csrf(HOME[role])
    checked = 0
    for path, method, endpoint in all_routes(people.rt):
        roles = getattr(endpoint, "console_roles", None)
        if (path, method) in PUBLIC or role in roles:
            continue
        url = concrete(path)
        r = people.http.get(url) if method == "GET" else people.http.request(method, url,
                                                                                data={"csrf_token": token})
        assert r.status_code == 403, (role, method, url, r.status_code)
        checked += 1
    assert checked > 0
    denied = people.audit_rows("console.access_denied")
    assert len(denied) == checked  # each refusal is a security alert in the trail
    assert {(r["event_id"], r["actor"], r["host"], r["outcome"]) for r in denied} == {
        ("110113", f"console:{PEOPLE[role]}", "10.9.8.7", 4)}
    assert all(r["details"]["role"] == role and r["details"]["path"].startswith("/") for r in denied)


def test_console_every_post_needs_the_csrf_token(people):
    people.sign_in("ada", PASSWORD)
    for path, method, _ in all_routes(people.rt):
        if method != "GET":
            r = people.http.request(method, concrete(path), data={"name": "x"})
            assert r.status_code == 403 and "security token" in r.text, (method, path)


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py",
                                  "/static/%2e%2e%2f%2e%2e%2fconfig/cxrd.toml", "/static//etc/passwd",
                                  "/static/..\\app.py"])
def test_console_static_files_do_not_leave_their_folder(people, path):
    r = people.http.get(path)
    assert r.status_code in (404, 400) and "import" not in r.text and "root:" not in r.text, path


@pytest.mark.parametrize("role", sorted(PEOPLE))
def test_console_every_page_and_download_of_a_role_is_never_cached(people, role):
    """Pages and downloads may hold audit rows: no-store on every one, whatever its status."""
    people.sign_in(PEOPLE[role], PASSWORD)
    urls = [concrete(p) for p, m, e in all_routes(people.rt) if m == "GET" and role in getattr(e, "console_roles", ())]
    if role == "compliance":
        urls.append("/audit/export?format=csv&month=2026-01")
    for url in urls:
        r = people.http.get(url)
        assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache", url
    if role == "compliance":
        assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment;")
