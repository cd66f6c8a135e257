"""storage.accounts on SQLite and on a real PostgreSQL 15: accounts, sessions, lock-out counters."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from storage import accounts, db
from storage.models import ConsoleSession, SigninFailure


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sessions(request, tmp_path):
    url = (f"sqlite:///{tmp_path / 'cxrd.db'}" if request.param == "sqlite"
           else request.getfixturevalue("fresh_pg_database"))
    engine = db.engine_from_url(url)
    db.migrate(engine)
    yield db.sessions(engine)
    engine.dispose()


def test_console_accounts_round_trip(sessions):
    with sessions.begin() as s:
        accounts.add(s, "alice", "admin", accounts.hash_password("a long password", 12))
        with pytest.raises(accounts.AccountError, match="already exists"):
            accounts.add(s, "alice", "admin", "x")
    with sessions.begin() as s:
        acct, stored = accounts.password_hash_of(s, "alice")
        assert acct.role == "admin" and not acct.disabled
        assert accounts.verify_or_waste(stored, "a long password")
        assert not accounts.verify_or_waste(stored, "a long passwore")
        assert not accounts.verify_or_waste(None, "a long password")
        _, before = accounts.set_role(s, "alice", "compliance")
        assert before == "admin"
        with pytest.raises(accounts.AccountError, match="role must be one of"):
            accounts.set_role(s, "alice", "root")
    with sessions() as s:
        assert [(a.name, a.role) for a in accounts.listing(s)] == [("alice", "compliance")]


def test_console_sessions_touch_time_out_and_end_once(sessions):
    with sessions.begin() as s:
        token = accounts.open_session(s, name="alice", role="admin", via="local", source="10.0.0.5")
    with sessions() as s:
        view = accounts.session_by_token(s, token)
    assert view is not None and view.name == "alice"
    assert accounts.session_verdict(view, idle_s=60, absolute_s=3600) == "live"
    with sessions.begin() as s:
        s.execute(update(ConsoleSession).values(last_seen_at=view.last_seen_at - timedelta(seconds=61)))
    with sessions() as s:
        view = accounts.session_by_token(s, token)
    assert accounts.session_verdict(view, idle_s=60, absolute_s=3600) == "idle"
    with sessions.begin() as s:
        ended = accounts.expire_sessions(s, idle_s=60, absolute_s=3600)
    assert [(v.name, v.end_reason, v.source) for v in ended] == [("alice", "idle", "10.0.0.5")]
    with sessions.begin() as s:
        assert accounts.end_session_id(s, view.id, "idle") is False  # already ended: not twice
        assert accounts.session_by_token(s, token) is None
        assert accounts.session_by_token(s, "x" * 200) is None


def test_console_lockout_backs_off_and_forgets(sessions):
    subject = accounts.name_subject("Alice")
    assert subject == accounts.name_subject("alice") and "alice" not in subject
    with sessions.begin() as s:
        assert accounts.record_failure(s, subject, threshold=3, base_s=60, max_s=600) is None
        assert accounts.record_failure(s, subject, threshold=3, base_s=60, max_s=600) is None
        first = accounts.record_failure(s, subject, threshold=3, base_s=60, max_s=600)
        second = accounts.record_failure(s, subject, threshold=3, base_s=60, max_s=600)
        for _ in range(10):
            capped = accounts.record_failure(s, subject, threshold=3, base_s=60, max_s=600)
    # 60 s at the threshold, then doubled: the second lock ends about 60 s after the first
    assert timedelta(seconds=59) < second - first < timedelta(seconds=62)
    assert timedelta(seconds=590) < capped - accounts.now() <= timedelta(seconds=600)  # capped at max_s
    with sessions() as s:
        assert accounts.locked_until(s, [subject, accounts.address_subject("10.0.0.5")]) == capped
    with sessions.begin() as s:  # a failure long after the last one starts the count again
        s.execute(update(SigninFailure).values(last_failure_at=second - timedelta(seconds=10_000),
                                               locked_until=None))
        assert accounts.record_failure(s, subject, threshold=3, base_s=60, max_s=600) is None
        accounts.clear_failures(s, subject)
    with sessions() as s:
        assert accounts.locked_until(s, [subject]) is None


def test_the_roles_are_the_same_everywhere_they_are_checked():
    """config checks the directory mapping and storage the rows, neither importing the other: the
    role set is spelled in both and must not drift (the CLI and the pages take config's)."""
    from config.loader import CONSOLE_ROLES
    from daemon.console.identity import ROLE_TITLES
    assert accounts.ROLES == CONSOLE_ROLES and set(ROLE_TITLES) == set(CONSOLE_ROLES)
