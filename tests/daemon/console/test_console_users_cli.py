"""`cxrd users`: local console accounts from the command line, passwords never on it, every change audited."""
from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import select

PASSWORD = "correct horse battery"


@pytest.fixture()
def users(cli_captured, monkeypatch):
    def run(*args: str, stdin: str = ""):  # noqa: ANN202
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return cli_captured("users", *args)
    return run


def _audit(state, *types):  # noqa: ANN001, ANN202
    from config import load_settings
    from daemon.runtime import Runtime
    from storage.models import AuditEvent
    rt = Runtime(load_settings(None))
    with rt.read_sessions() as s:
        return [(r.event_type, r.event_id, r.actor, json.loads(r.details)) for r in
                s.scalars(select(AuditEvent).where(AuditEvent.event_type.in_(types)).order_by(AuditEvent.seq))]


def test_console_users_life_cycle_is_audited(users, cli_state):
    assert users("add", "alice", "--role", "operations", stdin=PASSWORD + "\n")[0] == 0
    assert users("set-role", "alice", "compliance")[0] == 0
    assert users("reset-password", "alice", stdin="another long password\n")[0] == 0
    assert users("disable", "alice")[0] == 0
    code, out, _ = users("list", "--format", "json")
    assert code == 0 and [(a["name"], a["role"], a["disabled"]) for a in json.loads(out)] == [
        ("alice", "compliance", True)]
    assert users("enable", "alice")[0] == 0
    code, out, _ = users("list")
    assert "alice" in out and "compliance" in out and "active" in out
    rows = _audit(cli_state, "users.added", "users.role_set", "users.password_reset", "users.disabled",
                  "users.enabled")
    assert [r[0] for r in rows] == ["users.added", "users.role_set", "users.password_reset", "users.disabled",
                                    "users.enabled"]
    assert all(r[1] == "110113" and r[2].startswith("os:") and r[3]["user"] == "alice" for r in rows)
    assert rows[1][3]["previous_role"] == "operations"
    listed = _audit(cli_state, "users.listed")
    assert [(r[2].startswith("os:"), r[3]) for r in listed] == [(True, {"accounts": 1})] * 2


def test_console_users_password_rules_and_refusals(users, cli_state):
    code, _, err = users("add", "alice", "--role", "admin", stdin="short\n")
    assert code == 1 and "at least 12 characters" in err and "\n" == err[-1] and err.count("\n") == 1
    assert users("add", "alice", "--role", "admin", stdin=PASSWORD + "\n")[0] == 0
    code, _, err = users("add", "alice", "--role", "admin", stdin=PASSWORD + "\n")
    assert code == 1 and "already exists" in err
    code, _, err = users("add", "bad name", "--role", "admin", stdin=PASSWORD + "\n")
    assert code == 2 and "account name" in err
    code, _, err = users("disable", "nobody")
    assert code == 1 and "no console account named 'nobody'" in err
    for usage_error in (("add", "bob", "--role", "root"),
                        ("add", "bob", "--role", "admin", "--password", PASSWORD)):  # never on the command line
        with pytest.raises(SystemExit) as usage:
            users(*usage_error, stdin=PASSWORD + "\n")
        assert usage.value.code == 2
    assert [r[3]["user"] for r in _audit(cli_state, "users.added")] == ["alice"]


def test_console_users_hash_is_argon2id_and_a_changed_password_ends_sessions(users, cli_state):
    from config import load_settings
    from daemon.runtime import Runtime
    from storage import accounts
    from storage.models import ConsoleAccount, ConsoleSession
    assert users("add", "alice", "--role", "admin", stdin=PASSWORD + "\n")[0] == 0
    rt = Runtime(load_settings(None))
    with rt.sessions() as s, s.begin():
        stored = s.scalar(select(ConsoleAccount.password_hash))
        accounts.open_session(s, name="alice", role="admin", via="local", source="127.0.0.1")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert users("reset-password", "alice", stdin="another long password\n")[0] == 0
    with rt.read_sessions() as s:
        assert [r.end_reason for r in s.scalars(select(ConsoleSession))] == ["password"]
