"""Sign-in, sessions, lock-out and the audit rows they leave, through the real app in this process."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import update

from storage.models import ConsoleSession

PASSWORD = "correct horse battery"


def test_console_signin_sets_a_strict_secure_session_and_audits_login(console_client):
    c = console_client()
    c.add_user("alice", "compliance", PASSWORD)
    before = c.http.cookies.get("__Host-cxrd_pre")
    r = c.sign_in("alice", PASSWORD)
    assert r.status_code == 303 and r.headers["location"] == "/audit"
    cookie = r.headers["set-cookie"]
    assert "__Host-cxrd_session=" in cookie
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"):
        assert attribute in cookie
    token = c.http.cookies.get("__Host-cxrd_session")
    assert token and token != before  # a new token at sign-in, never one the browser had before
    rows = c.audit_rows("console.signin")
    assert [(r["event_id"], r["actor"], r["host"], r["details"]["role"]) for r in rows] == [
        ("110114", "console:alice", "10.9.8.7", "compliance")]


def test_console_session_token_is_stored_only_as_a_hash(console_client):
    c = console_client()
    c.add_user("alice", "admin", PASSWORD)
    c.sign_in("alice", PASSWORD)
    token = c.http.cookies.get("__Host-cxrd_session")
    db = (c.rt.state_dir / "cxrd.db").read_bytes() + (c.rt.state_dir / "cxrd.db-wal").read_bytes()
    assert token.encode() not in db and PASSWORD.encode() not in db


def test_console_wrong_password_and_unknown_name_get_the_same_answer(console_client):
    c = console_client()
    c.add_user("alice", "admin", PASSWORD)
    wrong = c.sign_in("alice", "not the password")
    unknown = c.sign_in("mallory", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.text.replace("alice", "X") == unknown.text.replace("mallory", "X")
    rows = c.audit_rows("console.signin_failed")
    assert [(r["actor"], r["outcome"], r["details"]["reason"]) for r in rows] == [
        ("console:alice", 4, "wrong password"), ("console:mallory", 4, "no such account")]


def test_console_locks_a_name_after_repeated_failures_and_audits_it(console_client):
    c = console_client(lockout_threshold=3, lockout_base_s=300)
    c.add_user("alice", "admin", PASSWORD)
    for _ in range(3):
        assert c.sign_in("alice", "guess guess guess").status_code == 401
    locked = c.sign_in("alice", PASSWORD)  # the right password no longer helps while locked
    assert locked.status_code == 401 and "Too many failed sign-ins" in locked.text
    assert "__Host-cxrd_session" not in c.http.cookies
    lock_rows = c.audit_rows("console.locked")
    assert [(r["event_id"], r["actor"], r["host"], r["details"]["locked"]) for r in lock_rows] == [
        ("110114", "console:alice", "10.9.8.7", "name")]
    failed = c.audit_rows("console.signin_failed")
    assert [r["details"]["reason"] for r in failed] == ["wrong password"] * 3 + ["locked out"]
    assert c.audit_rows("console.signin") == []


def test_console_locks_a_source_address_trying_many_names(console_client):
    c = console_client(lockout_threshold=100, lockout_address_threshold=4)
    c.add_user("alice", "admin", PASSWORD)
    for i in range(4):
        c.sign_in(f"user{i}", "guess guess guess")
    assert "Too many failed sign-ins" in c.sign_in("alice", PASSWORD).text
    assert [r["details"]["locked"] for r in c.audit_rows("console.locked")] == ["address"]


def test_console_disabled_account_cannot_sign_in(console_client):
    c = console_client()
    c.add_user("alice", "admin", PASSWORD)
    from storage import accounts
    with c.rt.sessions() as s, s.begin():
        accounts.set_disabled(s, "alice", True)
    assert c.sign_in("alice", PASSWORD).status_code == 401
    assert c.audit_rows("console.signin_failed")[0]["details"]["reason"] == "account disabled"


def test_console_signout_ends_the_session_on_the_server(console_client):
    c = console_client()
    c.add_user("alice", "admin", PASSWORD)
    c.sign_in("alice", PASSWORD)
    token = c.http.cookies.get("__Host-cxrd_session")
    assert c.http.get("/accounts").status_code == 200
    r = c.post("/signout", {}, page="/accounts")
    assert r.status_code == 303
    c.http.cookies.clear()
    replayed = c.http.get("/accounts", headers={"cookie": f"__Host-cxrd_session={token}"})  # the old cookie
    assert replayed.status_code == 303 and replayed.headers["location"].startswith("/signin")
    rows = c.audit_rows("console.signout")
    assert [(r["event_id"], r["actor"], r["details"]["reason"]) for r in rows] == [
        ("110114", "console:alice", "signed out")]


def _age_sessions(c, *, created: timedelta = timedelta(0), seen: timedelta = timedelta(0)) -> None:
    now = datetime.now(timezone.utc)
    with c.rt.sessions() as s, s.begin():
        s.execute(update(ConsoleSession).values(created_at=now - created, last_seen_at=now - seen))


def test_console_idle_session_times_out_on_the_server(console_client):
    c = console_client(session_idle_s=600, session_absolute_s=3600)
    c.add_user("alice", "admin", PASSWORD)
    c.sign_in("alice", PASSWORD)
    _age_sessions(c, created=timedelta(seconds=700), seen=timedelta(seconds=500))
    assert c.http.get("/accounts").status_code == 200  # 500 s idle < 600 s
    _age_sessions(c, created=timedelta(seconds=700), seen=timedelta(seconds=601))
    r = c.http.get("/accounts")
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")
    assert [r["details"]["reason"] for r in c.audit_rows("console.signout")] == ["idle time-out"]


def test_console_absolute_time_out_ends_even_an_active_session(console_client):
    c = console_client(session_idle_s=600, session_absolute_s=3600)
    c.add_user("alice", "admin", PASSWORD)
    c.sign_in("alice", PASSWORD)
    _age_sessions(c, created=timedelta(seconds=3601), seen=timedelta(seconds=1))
    assert c.http.get("/accounts").status_code == 303
    assert [r["details"]["reason"] for r in c.audit_rows("console.signout")] == ["expired time-out"]


def test_console_signin_never_redirects_off_the_console(console_client):
    c = console_client()
    c.add_user("alice", "admin", PASSWORD)
    r = c.http.post("/signin", data={"name": "alice", "password": PASSWORD, "next": "//evil.example/x",
                                     "csrf_token": c.csrf()})
    assert r.headers["location"] == "/accounts"


def test_console_sessions_that_time_out_unused_are_ended_and_audited_by_the_sweep(console_client):
    from daemon.console.authentication import expire_sessions
    c = console_client(session_idle_s=600, session_absolute_s=3600)
    c.add_user("alice", "admin", PASSWORD)
    c.sign_in("alice", PASSWORD)
    assert expire_sessions(c.rt) == 0
    _age_sessions(c, created=timedelta(seconds=700), seen=timedelta(seconds=601))
    assert expire_sessions(c.rt) == 1
    assert expire_sessions(c.rt) == 0  # once
    rows = c.audit_rows("console.signout")
    assert [(r["actor"], r["host"], r["details"]["reason"]) for r in rows] == [
        ("console:alice", "10.9.8.7", "idle time-out")]
    assert c.http.get("/accounts").status_code == 303
    assert len(c.audit_rows("console.signout")) == 1  # not audited a second time when the browser returns


def test_console_too_long_password_is_refused_not_truncated(console_client):
    c = console_client()
    c.add_user("alice", "admin", "a" * 1024)
    assert c.sign_in("alice", "a" * 1025).status_code == 401
    assert c.sign_in("alice", "a" * 1024).status_code == 303


def test_console_an_address_that_is_no_address_is_one_placeholder_for_audit_and_lockout(console_client):
    """X-Forwarded-For from a trusted proxy can carry any text: it must not reach the audit rows, and
    changing it at every attempt must not dodge the per-address lock-out."""
    from daemon.console.cookies import UNKNOWN_ADDRESS
    first = console_client(lockout_address_threshold=3, lockout_threshold=100)
    for i in range(4):
        c = type(first)(first.rt, client=(f"<b>evil{i}</b> 1.2.3.4", 1))
        c.sign_in(f"nobody{i}", "wrong password")
    rows = first.audit_rows("console.signin_failed", "console.locked")
    assert {r["host"] for r in rows} == {UNKNOWN_ADDRESS}
    assert any(r["event_type"] == "console.locked" and r["details"].get("locked") == "address" for r in rows)
    assert rows[-1]["details"].get("reason") == "locked out"
    ok = type(first)(first.rt, client=("::ffff:10.1.2.3", 1))
    ok.sign_in("nobody", "wrong password")
    assert first.audit_rows("console.signin_failed")[-1]["host"] == "10.1.2.3"


def test_console_signing_in_over_a_live_session_ends_it(console_client):
    """On a shared workstation the next person signs in over the last one's session: the old session
    ends on the server (audited), not just in this browser's cookie jar."""
    c = console_client()
    c.add_user("alice", "admin", PASSWORD)
    c.add_user("bob", "compliance", PASSWORD)
    c.sign_in("alice", PASSWORD)
    old = dict(c.http.cookies)
    token = c.csrf("/accounts")
    r = c.http.post("/signin", data={"name": "bob", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/audit"
    assert [row["actor"] for row in c.audit_rows("console.signout")] == ["console:alice"]
    replay = type(c)(c.rt)
    for name, value in old.items():
        replay.http.cookies.set(name, value)
    assert replay.http.get("/accounts").status_code == 303  # alice's cookie no longer works
