"""Console accounts, sessions and sign-in failure counters: the rows behind `cxrd users` and
`cxrd console`, shared by both so neither imports the other.

What must stay true:
* a password is stored only as an argon2id hash (memory-hard), and a session only as the SHA-256 of
  its token, so a copy of the database signs nobody in;
* checking a name that has no account costs the same argon2 work as checking one that has
  (`verify_or_waste`), so timing does not tell which names exist;
* failure counters are keyed by a SHA-256 of the name or address, never the text typed.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.models import ConsoleAccount, ConsoleSession, SigninFailure

ROLES = ("compliance", "operations", "admin")
MAX_PASSWORD_LENGTH = 1024  # argon2 hashes any length; this only bounds the work one request can cause
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class AccountError(ValueError):
    """A refused account operation, with a one-line message for the person (unknown name, bad role...)."""


def _hasher():  # noqa: ANN202
    from argon2 import PasswordHasher, Type
    # RFC 9106's second recommended profile (argon2id, 64 MiB, 3 passes); cost in docs/performance.md.
    return PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4, type=Type.ID)


_DUMMY: list[str] = []
# Each argon2 computation holds 64 MiB: at most this many at once in a process, so a flood of sign-in
# attempts queues (bounded by the server's connection limit) instead of taking the host's memory.
HASH_SLOTS = threading.BoundedSemaphore(4)


def now() -> datetime:
    return datetime.now(timezone.utc)


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise AccountError("an account name is 1 to 64 letters, digits, '.', '_', '@' or '-', starting with "
                           "a letter or digit")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)} (got {role[:20]!r})")
    return role


def hash_password(password: str, min_length: int) -> str:
    if len(password) < min_length:
        raise AccountError(f"a password must be at least {min_length} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"a password must be at most {MAX_PASSWORD_LENGTH} characters")
    if password != password.strip() or any(c in password for c in "\r\n\x00"):
        raise AccountError("a password must not start or end with spaces or contain line breaks")
    with HASH_SLOTS:
        return _hasher().hash(password)


def verify_or_waste(password_hash: str | None, password: str) -> bool:
    """True when `password` matches; with no hash (unknown name), spend the same work and say False."""
    from argon2.exceptions import InvalidHashError, VerificationError
    hasher = _hasher()
    with HASH_SLOTS:
        if password_hash is None:
            if not _DUMMY:
                _DUMMY.append(hasher.hash(secrets.token_urlsafe(16)))
            password_hash = _DUMMY[0]
            password = password + "\x00never"
        try:
            return hasher.verify(password_hash, password[:MAX_PASSWORD_LENGTH])
        except (VerificationError, InvalidHashError):
            return False


# --- accounts -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Account:
    name: str
    role: str
    disabled: bool
    created_at: datetime
    password_changed_at: datetime


def _public(row: ConsoleAccount) -> Account:
    return Account(row.name, row.role, row.disabled, row.created_at, row.password_changed_at)


def _row(session: Session, name: str) -> ConsoleAccount:
    row = session.scalar(select(ConsoleAccount).where(ConsoleAccount.name == name))
    if row is None:
        raise AccountError(f"no console account named {name[:64]!r}")
    return row


def get(session: Session, name: str) -> Account | None:
    row = session.scalar(select(ConsoleAccount).where(ConsoleAccount.name == name))
    return None if row is None else _public(row)


def password_hash_of(session: Session, name: str) -> tuple[Account, str] | None:
    """The account and its hash, for sign-in; None when no account has this name."""
    row = session.scalar(select(ConsoleAccount).where(ConsoleAccount.name == name))
    return None if row is None else (_public(row), row.password_hash)


def listing(session: Session) -> list[Account]:
    return [_public(r) for r in session.scalars(select(ConsoleAccount).order_by(ConsoleAccount.name))]


def add(session: Session, name: str, role: str, password_hash: str) -> Account:
    check_name(name)
    check_role(role)
    if session.scalar(select(ConsoleAccount.id).where(ConsoleAccount.name == name)) is not None:
        raise AccountError(f"a console account named {name!r} already exists")
    t = now()
    row = ConsoleAccount(name=name, role=role, password_hash=password_hash, disabled=False, created_at=t,
                         password_changed_at=t)
    session.add(row)
    session.flush()
    return _public(row)


def set_disabled(session: Session, name: str, disabled: bool) -> Account:
    row = _row(session, name)
    row.disabled = disabled
    if disabled:
        end_sessions_of(session, name, "disabled")
    else:
        clear_failures(session, name_subject(name))  # enabling also lifts a lock-out of the name
    return _public(row)


def set_password(session: Session, name: str, password_hash: str) -> Account:
    row = _row(session, name)
    row.password_hash = password_hash
    row.password_changed_at = now()
    end_sessions_of(session, name, "password")
    clear_failures(session, name_subject(name))  # a new password lifts a lock-out of the name
    return _public(row)


def set_role(session: Session, name: str, role: str) -> tuple[Account, str]:
    """Change the role; returns the account and its former role. Open sessions end (they carry the role)."""
    check_role(role)
    row = _row(session, name)
    before, row.role = row.role, role
    end_sessions_of(session, name, "role")
    return _public(row), before


# --- sessions ---------------------------------------------------------------------------------------

def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class SignedIn:
    id: int
    name: str
    role: str
    via: str
    created_at: datetime
    last_seen_at: datetime
    end_reason: str = ""
    source: str = ""      # the client address at sign-in


def open_session(session: Session, *, name: str, role: str, via: str, source: str) -> str:
    """A new session for a person just signed in; returns the token for the cookie (a fresh one at
    every sign-in, so a token planted before sign-in never becomes a signed-in one)."""
    token = secrets.token_urlsafe(32)
    t = now()
    session.add(ConsoleSession(token_hash=token_hash(token), user_name=name, role=check_role(role), via=via,
                               source=source[:64], created_at=t, last_seen_at=t, end_reason=""))
    session.flush()
    return token


def session_by_token(session: Session, token: str) -> SignedIn | None:
    """The open session of this cookie token, or None (unknown, ended, or not a token at all).
    A read: most requests need no write (see `session_verdict`)."""
    if not token or len(token) > 128:
        return None
    row = session.scalar(select(ConsoleSession).where(ConsoleSession.token_hash == token_hash(token),
                                                      ConsoleSession.ended_at.is_(None)))
    return None if row is None else SignedIn(row.id, row.user_name, row.role, row.via, row.created_at,
                                             row.last_seen_at)


def session_verdict(view: SignedIn, *, idle_s: int, absolute_s: int, touch_after_s: float = 15.0) -> str:
    """"expired" (older than absolute_s), "idle" (unused for idle_s), "touch" (live; record the use,
    which is done at most every touch_after_s so a page view is not always a write) or "live"."""
    t = now()
    if t - view.created_at > timedelta(seconds=absolute_s):
        return "expired"
    if t - view.last_seen_at > timedelta(seconds=idle_s):
        return "idle"
    return "touch" if (t - view.last_seen_at).total_seconds() >= touch_after_s else "live"


def touch_session(session: Session, session_id: int) -> None:
    session.execute(update(ConsoleSession).where(ConsoleSession.id == session_id, ConsoleSession.ended_at.is_(None))
                    .values(last_seen_at=now()))


def end_session_id(session: Session, session_id: int, reason: str) -> bool:
    """End this session if it is still open; False when another request (or the sweep) ended it first,
    so each ending is audited once."""
    return bool(session.execute(update(ConsoleSession)
                                .where(ConsoleSession.id == session_id, ConsoleSession.ended_at.is_(None))
                                .values(ended_at=now(), end_reason=reason)).rowcount)


def expire_sessions(session: Session, *, idle_s: int, absolute_s: int) -> list[SignedIn]:
    """End every open session past its idle or absolute time-out; returns each, with its source
    address (for the audit row of the sign-out nobody clicked)."""
    t = now()
    stale = session.scalars(select(ConsoleSession).where(
        ConsoleSession.ended_at.is_(None),
        (ConsoleSession.created_at < t - timedelta(seconds=absolute_s))
        | (ConsoleSession.last_seen_at < t - timedelta(seconds=idle_s)))).all()
    out = []
    for row in stale:
        reason = "expired" if t - row.created_at > timedelta(seconds=absolute_s) else "idle"
        row.ended_at, row.end_reason = t, reason
        out.append(SignedIn(row.id, row.user_name, row.role, row.via, row.created_at, row.last_seen_at, reason,
                            row.source))
    return out


def open_sessions_via(session: Session, via: str) -> list[SignedIn]:
    """The open sessions signed in by `via` (local | ldap), oldest first."""
    rows = session.scalars(select(ConsoleSession).where(ConsoleSession.via == via, ConsoleSession.ended_at.is_(None))
                           .order_by(ConsoleSession.id)).all()
    return [SignedIn(r.id, r.user_name, r.role, r.via, r.created_at, r.last_seen_at, source=r.source) for r in rows]


def end_session(session: Session, token: str, reason: str = "signout") -> SignedIn | None:
    row = session.scalar(select(ConsoleSession).where(ConsoleSession.token_hash == token_hash(token),
                                                      ConsoleSession.ended_at.is_(None)))
    if row is None:
        return None
    row.ended_at, row.end_reason = now(), reason
    return SignedIn(row.id, row.user_name, row.role, row.via, row.created_at, row.last_seen_at)


def end_sessions_of(session: Session, name: str, reason: str) -> int:
    return session.execute(update(ConsoleSession)
                           .where(ConsoleSession.user_name == name, ConsoleSession.ended_at.is_(None))
                           .values(ended_at=now(), end_reason=reason)).rowcount or 0


# --- failures and lock-out -----------------------------------------------------------------------------

def name_subject(name: str) -> str:
    return "name:" + hashlib.sha256(name.casefold().encode("utf-8", "replace")).hexdigest()


def address_subject(address: str) -> str:
    return "addr:" + hashlib.sha256(address.encode("utf-8", "replace")).hexdigest()


def locked_until(session: Session, subjects: list[str]) -> datetime | None:
    """The latest lock-out still running among `subjects`, or None."""
    t = now()
    until = [r.locked_until for r in session.scalars(select(SigninFailure).where(SigninFailure.subject.in_(subjects)))
             if r.locked_until is not None and r.locked_until > t]
    return max(until) if until else None


def record_failure(session: Session, subject: str, *, threshold: int, base_s: int, max_s: int) -> datetime | None:
    """Count one failure; from the `threshold`-th in a row on, lock the subject out for `base_s`,
    doubling with each further failure up to `max_s`. Returns the new lock-out's end, if any.
    Failures older than `max_s` are forgotten."""
    t = now()
    row = session.get(SigninFailure, subject)
    if row is None:
        row = SigninFailure(subject=subject, failures=0, last_failure_at=t)
        session.add(row)
    elif t - row.last_failure_at > timedelta(seconds=max_s):
        row.failures, row.locked_until = 0, None
    row.failures += 1
    row.last_failure_at = t
    if row.failures >= threshold:
        row.locked_until = t + timedelta(seconds=min(base_s * 2 ** min(row.failures - threshold, 30), max_s))
        session.flush()
        return row.locked_until
    session.flush()
    return None


def clear_failures(session: Session, subject: str) -> None:
    row = session.get(SigninFailure, subject)
    if row is not None:
        session.delete(row)


def audited(session: Session, audit_key: bytes, event_type: str, *, actor: str, host: str, user: str,
            **details: object) -> None:
    """The audit row of an account change, in the change's own transaction (both or neither)."""
    from storage import audit
    audit.append(session, audit_key, event_type=event_type, actor=actor, host=host,
                 details={"user": user, **details})
