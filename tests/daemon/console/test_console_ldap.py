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
