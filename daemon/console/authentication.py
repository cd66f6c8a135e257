"""Signing a person in: lock-out check, local account or directory, failure counting, audit.

What must stay true:
* one message for every refusal (unknown name, wrong password, disabled account, no role), and an
  unknown name costs the same password-hashing work as a known one, so nobody learns which names exist;
* failures are counted per name (whether or not it exists) and per source address; a locked name or
  address is refused before any password is checked, so guessing stops while locked;
* every attempt leaves one audit row (110114 User Authentication, Login), a new lock-out another one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from daemon.runtime import Runtime
from storage.accounts import NAME, SignedIn  # NAME: the account-name rule; only such text is an actor

log = logging.getLogger("cxrd.console")

REFUSED = "The name or password is not right, or this account may not sign in here."
LOCKED = "Too many failed sign-ins. Wait a few minutes and try again, or ask an administrator."
UNAVAILABLE = "Sign-in is not possible right now (the directory cannot be reached). Try again later."


@dataclass(frozen=True)
class SigninResult:
    token: str | None    # the new session's token when signed in
    name: str
    role: str
    message: str         # for the person, when refused


def _actor(name: str) -> str:
    """The audit actor for a name typed: kept when it could be an account name, else a placeholder
    (text that is no name at all, a password typed in the wrong field say, is not written)."""
    return f"console:{name}" if NAME.match(name) else "console:(not a valid name)"


def sign_in(rt: Runtime, name: str, password: str, source: str) -> SigninResult:
    from storage import accounts
    c = rt.settings.console
    name = name.strip()[:128]
    too_long = len(password) > accounts.MAX_PASSWORD_LENGTH  # no stored password is longer: wrong
    password = password[:accounts.MAX_PASSWORD_LENGTH]
    subjects = [accounts.name_subject(name), accounts.address_subject(source)]
    with rt.read_sessions() as s:  # one read for both: the lock-out, then the account
        locked = accounts.locked_until(s, subjects)
        found = accounts.password_hash_of(s, name) if locked is None and NAME.match(name) else None
    if locked is not None:
        rt.audit("console.signin_failed", outcome=4, actor=_actor(name), host=source, reason="locked out",
                 locked_until=locked.isoformat(timespec="seconds"))
        return SigninResult(None, name, "", LOCKED)

    role, via, reason, account = "", "", "", "none"
    if found is not None:
        acct, password_hash = found
        account = "local"
        if not accounts.verify_or_waste(password_hash, password) or too_long:
            reason = "wrong password"
        elif acct.disabled:
            reason = "account disabled"
        else:
            role, via = acct.role, "local"
    elif c.ldap.enabled and NAME.match(name) and not too_long:
        from daemon.console import directory
        try:
            answer = directory.authenticate(c.ldap, name, password)
        except directory.DirectoryError as exc:
            log.warning("console.directory_unavailable", extra={"cxrd_fields": {"error": str(exc)}})
            rt.audit("console.signin_failed", outcome=8, actor=_actor(name), host=source,
                     reason=f"directory unavailable: {exc}")
            return SigninResult(None, name, "", UNAVAILABLE)
        account = "ldap" if answer.found else "none"
        if not answer.found:  # a name the directory does not know costs what a wrong password costs
            accounts.verify_or_waste(None, password)
        if answer.role is None:
            reason = answer.reason
        else:
            role, via = answer.role, "ldap"
    else:
        accounts.verify_or_waste(None, password)
        reason = "no such account"

    if not role:
        _count_failure(rt, name, source, subjects)
        rt.audit("console.signin_failed", outcome=4, actor=_actor(name), host=source, reason=reason,
                 account=account)
        return SigninResult(None, name, "", REFUSED)

    with rt.sessions() as s, s.begin():
        accounts.clear_failures(s, subjects[0])
        token = accounts.open_session(s, name=name, role=role, via=via, source=source)
    rt.audit("console.signin", actor=_actor(name), host=source, role=role, via=via)
    return SigninResult(token, name, role, "")


def _count_failure(rt: Runtime, name: str, source: str, subjects: list[str]) -> None:
    from storage import accounts
    c = rt.settings.console
    with rt.sessions() as s, s.begin():
        by_name = accounts.record_failure(s, subjects[0], threshold=c.lockout_threshold,
                                          base_s=c.lockout_base_s, max_s=c.lockout_max_s)
        by_address = accounts.record_failure(s, subjects[1], threshold=c.lockout_address_threshold,
                                             base_s=c.lockout_base_s, max_s=c.lockout_max_s)
    for what, until in (("name", by_name), ("address", by_address)):
        if until is not None:
            rt.audit("console.locked", outcome=8, actor=_actor(name), host=source, locked=what,
                     locked_until=until.isoformat(timespec="seconds"),
                     reason=f"too many failed sign-ins for this {what}")


def audit_signout(rt: Runtime, view: SignedIn, host: str, reason: str) -> None:
    """The one record of a session's end (110114 Logout), however it ended: signed out, timed out,
    or no longer backed by the directory."""
    rt.audit("console.signout", actor=_actor(view.name), host=host, reason=reason, role=view.role, via=view.via)


def end_session(rt: Runtime, view: SignedIn, end_reason: str, host: str, reason: str) -> bool:
    """End this open session and record it, unless another request or the sweep ended it first (each
    ending is recorded once). True when it was ended here."""
    from storage import accounts
    with rt.sessions() as s, s.begin():
        ended = accounts.end_session_id(s, view.id, end_reason)
    if ended:
        audit_signout(rt, view, host, reason)
    return ended


def sign_out(rt: Runtime, token: str, source: str) -> None:
    from storage import accounts
    with rt.sessions() as s, s.begin():
        ended = accounts.end_session(s, token, "signout")
    if ended is not None:
        audit_signout(rt, ended, source, "signed out")


def expire_sessions(rt: Runtime) -> int:
    """End the sessions past their time-outs that nobody used since, each audited as a sign-out, so
    the trail shows when every session ended even if its browser never came back."""
    from storage import accounts
    c = rt.settings.console
    with rt.sessions() as s, s.begin():
        ended = accounts.expire_sessions(s, idle_s=c.session_idle_s, absolute_s=c.session_absolute_s)
    for view in ended:
        audit_signout(rt, view, view.source, f"{view.end_reason} time-out")
    return len(ended)
