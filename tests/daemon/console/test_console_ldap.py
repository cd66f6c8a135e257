"""Directory sign-in against a real OpenLDAP server (slapd) started by the tests: search bind as the
service account, StartTLS verified against the server's certificate, group -> role mapping, fail closed."""
from __future__ import annotations

import dataclasses

import pytest

from config import ConfigError, load_settings
from daemon.console import directory


@pytest.fixture()
def ldap_settings(slapd, monkeypatch):
    for k, v in slapd.settings().items():
        monkeypatch.setenv(k, v)
    return load_settings(None).console.ldap


@pytest.mark.parametrize("name, role", [("carol", "compliance"), ("otto", "operations"), ("ada", "admin")])
def test_console_ldap_maps_the_persons_group_to_a_role(ldap_settings, slapd, name, role):
    answer = directory.authenticate(ldap_settings, name, slapd.PASSWORD)
    assert (answer.role, answer.reason) == (role, "")


@pytest.mark.parametrize("name, password, reason", [
    ("carol", "wrong password", "wrong password"),
    ("carol", "", "empty password"),            # an empty password would be an anonymous bind
    ("nina", "directory pass 1", "no console role (in no mapped group)"),
    ("dora", "directory pass 1", "several console roles (admin, compliance)"),
    ("nobody", "directory pass 1", "no directory entry"),
    ("*", "directory pass 1", "no directory entry"),  # filter characters are escaped, never a wildcard
])
def test_console_ldap_refuses_fail_closed(ldap_settings, name, password, reason):
    answer = directory.authenticate(ldap_settings, name, password)
    assert (answer.role, answer.reason) == (None, reason)


def test_console_ldap_over_ldaps(ldap_settings, slapd):
    ldaps = dataclasses.replace(ldap_settings, url=slapd.ldaps_url, start_tls=False)
    assert directory.authenticate(ldaps, "ada", slapd.PASSWORD).role == "admin"


def test_console_ldap_starttls_verifies_the_server_certificate(ldap_settings, slapd, tmp_path):
    from daemon.console.tls import make_self_signed
    make_self_signed(tmp_path / "other.crt", tmp_path / "other.key")
    wrong_ca = dataclasses.replace(ldap_settings, ca=str(tmp_path / "other.crt"))
    with pytest.raises(directory.DirectoryError):
        directory.authenticate(wrong_ca, "carol", slapd.PASSWORD)


def test_console_ldap_wrong_service_password_is_an_outage_not_a_refusal(ldap_settings, slapd, tmp_path):
    bad = tmp_path / "svc.pass"
    bad.write_text("not it\n")
    with pytest.raises(directory.DirectoryError, match="service account"):
        directory.authenticate(dataclasses.replace(ldap_settings, bind_password_file=str(bad)), "carol", slapd.PASSWORD)


def test_console_ldap_signin_through_the_console_and_audit(console_client, slapd, monkeypatch):
    for k, v in slapd.settings().items():
        monkeypatch.setenv(k, v)
    c = console_client()
    r = c.sign_in("otto", slapd.PASSWORD)
    assert r.status_code == 303 and r.headers["location"] == "/operations"
    assert c.http.get("/accounts").status_code == 403
    refused = type(c)(c.rt).sign_in("dora", slapd.PASSWORD)
    assert refused.status_code == 401
    ok = c.audit_rows("console.signin")
    assert [(r["actor"], r["details"]) for r in ok] == [("console:otto", {"role": "operations", "via": "ldap"})]
    failed = c.audit_rows("console.signin_failed")
    assert [(r["actor"], r["details"]["reason"], r["details"]["account"]) for r in failed] == [
        ("console:dora", "several console roles (admin, compliance)", "ldap")]


def test_console_ldap_settings_are_checked(monkeypatch, slapd):
    for k, v in slapd.settings().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CXRD_CONSOLE__LDAP__ROLE_GROUPS", '["cn=x,dc=y => root"]')
    with pytest.raises(ConfigError, match="role_groups"):
        load_settings(None)
    monkeypatch.setenv("CXRD_CONSOLE__LDAP__ROLE_GROUPS", '["cn=x,dc=y => admin"]')
    monkeypatch.setenv("CXRD_CONSOLE__LDAP__URL", "ldap://dc.example.org")
    monkeypatch.setenv("CXRD_CONSOLE__LDAP__START_TLS", "false")
    with pytest.raises(ConfigError, match="in clear"):
        load_settings(None)


def test_console_ldap_sessions_end_when_the_directory_takes_the_role_away(console_client, slapd, monkeypatch):
    """IT removes access in the directory: the session ends at the next check, not at its time-out."""
    from datetime import timedelta

    from daemon.console import directory_sessions
    from storage import accounts
    for k, v in slapd.settings().items():
        monkeypatch.setenv(k, v)
    rita = slapd.add_person("rita", "cxrd-compliance")  # will leave the console's groups
    slapd.add_person("milo", "cxrd-compliance")         # will move to operations
    slapd.add_person("kept", "cxrd-operations")         # stays
    people = {name: console_client() for name in ("rita", "milo", "kept")}
    for name, c in people.items():
        assert c.sign_in(name, slapd.PASSWORD).status_code == 303, name
    rt, confirmed, t0 = people["rita"].rt, {}, accounts.now()
    every = timedelta(seconds=rt.settings.console.ldap.recheck_s)

    assert directory_sessions.recheck(rt, confirmed, at=t0 + every) == 0  # asked, nothing changed
    assert len(confirmed) == 3
    slapd.change(f"dn: {slapd.group_dn('cxrd-compliance')}\nchangetype: modify\ndelete: member\nmember: {rita}\n")
    slapd.change(f"dn: {slapd.group_dn('cxrd-compliance')}\nchangetype: modify\ndelete: member\n"
                 f"member: uid=milo,ou=people,{slapd.BASE}\n-\n")
    slapd.change(f"dn: {slapd.group_dn('cxrd-operations')}\nchangetype: modify\nadd: member\n"
                 f"member: uid=milo,ou=people,{slapd.BASE}\n")
    assert directory_sessions.recheck(rt, confirmed, at=t0 + every * 1.5) == 0  # not due: confirmed at t0 + every
    assert people["rita"].http.get("/audit").status_code == 200
    assert directory_sessions.recheck(rt, confirmed, at=t0 + every * 2) == 2

    assert people["rita"].http.get("/audit").status_code == 303  # back to sign-in
    assert people["milo"].http.get("/audit").status_code == 303
    assert people["kept"].http.get("/operations").status_code == 200
    ended = {r["actor"]: r["details"]["reason"] for r in people["rita"].audit_rows("console.signout")}
    assert ended == {"console:rita": "directory: role changed in the directory (no console role (in no mapped group))",
                     "console:milo": "directory: role changed in the directory (now operations)"}
    assert people["milo"].sign_in("milo", slapd.PASSWORD).headers["location"] == "/operations"  # the new role


def test_console_ldap_sessions_outlive_a_short_outage_but_not_a_long_one(console_client, slapd, monkeypatch):
    import dataclasses
    from datetime import timedelta

    from conftest import free_port
    from daemon.console import directory_sessions
    from storage import accounts
    for k, v in slapd.settings().items():
        monkeypatch.setenv(k, v)
    c, carol = console_client(), console_client()
    assert c.sign_in("otto", slapd.PASSWORD).status_code == 303
    assert carol.sign_in("carol", slapd.PASSWORD).status_code == 303
    cfg = c.rt.settings.console.ldap
    gone = dataclasses.replace(cfg, url=f"ldap://127.0.0.1:{free_port()}")
    down = dataclasses.replace(c.rt.settings.console, ldap=gone)
    c.rt.settings = dataclasses.replace(c.rt.settings, console=down)  # the directory stops answering
    asked = []
    real = directory_sessions.directory.current_role
    monkeypatch.setattr(directory_sessions.directory, "current_role",
                        lambda cfg, name: asked.append(name) or real(cfg, name))  # counts the real calls
    confirmed, t0, every = {}, accounts.now(), timedelta(seconds=cfg.recheck_s)
    assert directory_sessions.recheck(c.rt, confirmed, at=t0 + every) == 0
    assert len(asked) == 1  # one failure per round: the next person is not made to wait for it too
    assert directory_sessions.recheck(c.rt, confirmed, at=t0 + every * 2) == 0
    assert c.http.get("/operations").status_code == 200
    assert directory_sessions.recheck(c.rt, confirmed, at=t0 + every * 3) == 2
    assert c.http.get("/operations").status_code == 303
    rows = c.audit_rows("console.signout")
    assert len(rows) == 2 and all(r["details"]["reason"].startswith("directory: not confirmed for 900 s (")
                                  for r in rows)


def test_console_ldap_a_failed_search_is_an_outage_not_a_missing_person():
    """A busy or timed-out directory answers an empty result with a non-zero code: never "no entry"."""
    class Searched:
        def __init__(self, code: int):
            self.result = {"result": code}
    assert directory._answered(Searched(0), "person") == 0
    assert directory._answered(Searched(4), "person", directory.SIZE_LIMIT_EXCEEDED) == 4
    for code in (3, 51, 52, 4):  # time limit, busy, unavailable; size limit where it is not expected
        with pytest.raises(directory.DirectoryError, match=f"LDAP result {code}"):
            directory._answered(Searched(code), "group")


def test_console_ldap_sessions_end_when_directory_signin_is_turned_off(console_client, slapd, monkeypatch):
    import dataclasses

    from daemon.console import directory_sessions
    for k, v in slapd.settings().items():
        monkeypatch.setenv(k, v)
    c = console_client()
    c.add_user("local1", "operations", "a local password 1")
    assert c.sign_in("ada", slapd.PASSWORD).status_code == 303
    local = type(c)(c.rt)
    assert local.sign_in("local1", "a local password 1").status_code == 303
    off = dataclasses.replace(c.rt.settings.console.ldap, enabled=False)
    c.rt.settings = dataclasses.replace(c.rt.settings, console=dataclasses.replace(c.rt.settings.console, ldap=off))
    assert directory_sessions.recheck(c.rt, {}) == 1
    assert c.http.get("/accounts").status_code == 303
    assert local.http.get("/operations").status_code == 200  # local accounts are not the directory's


def test_console_ldap_refusals_take_the_same_floor_for_local_directory_and_unknown_names(console_client, slapd,
                                                                                          monkeypatch):
    """A local name skips the directory search: without a floor its refusal would be the quick one."""
    import time

    from daemon.console.pages.signin import REFUSAL_FLOOR_S
    for k, v in slapd.settings().items():
        monkeypatch.setenv(k, v)
    c = console_client(lockout_threshold=100, lockout_address_threshold=100)
    c.add_user("localname", "operations", "a local password 1")
    for name in ("localname", "carol", "nobody-here"):
        started = time.monotonic()
        assert c.sign_in(name, "not the password 1").status_code == 401
        assert time.monotonic() - started >= REFUSAL_FLOOR_S, name
    assert c.sign_in("localname", "a local password 1").status_code == 303
