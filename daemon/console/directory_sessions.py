"""Directory sessions are checked again while they live: the role a person signed in with came from
their directory groups at that moment, and hospital IT removes access in the directory, not in cxrd.

What must stay true:
* a directory person whose entry is gone, who is in no mapped group any more, or whose groups now map
  to another role (or to two) is signed out at the first check after the change, audited as a sign-out
  with the directory's answer as the reason; their next sign-in gets whatever the directory says then;
* the sign-in itself counts as a check, so a session is asked about at most every `recheck_s`;
* when the directory cannot be asked, sessions live on through short outages, but none outlives
  three `recheck_s` without a confirmed answer (fail closed), nor directory sign-in being turned off.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from daemon.console import directory
from daemon.console.authentication import end_session
from daemon.runtime import Runtime
from storage import accounts

log = logging.getLogger("cxrd.console")

END_REASON = "directory"          # console_sessions.end_reason of a session ended here
UNCONFIRMED_CHECKS = 3            # checks without an answer a session may live through


def recheck(rt: Runtime, confirmed: dict[int, datetime], at: datetime | None = None) -> int:
    """Ask the directory again about each directory session due for a check at `at` (now); end those
    it no longer backs. `confirmed` (session id -> when last confirmed) is the caller's memory between
    rounds. Returns how many sessions were ended."""
    cfg = rt.settings.console.ldap
    with rt.read_sessions() as s:
        open_now = accounts.open_sessions_via(s, "ldap")
    for gone in set(confirmed) - {v.id for v in open_now}:
        del confirmed[gone]
    if not open_now:
        return 0
    if not cfg.enabled:
        return _end(rt, open_now, "directory sign-in is turned off")
    t = at or accounts.now()
    every = timedelta(seconds=cfg.recheck_s)
    due = [v for v in open_now if t - confirmed.get(v.id, v.created_at) >= every]
    ended, outage = 0, None
    for name in dict.fromkeys(v.name for v in due):
        mine = [v for v in due if v.name == name]
        if outage is None:  # once the directory failed this round, the others are not asked (each would wait)
            try:
                answer = directory.current_role(cfg, name)
            except directory.DirectoryError as exc:
                log.warning("console.directory_recheck_failed", extra={"cxrd_fields": {"error": str(exc)}})
                outage = exc
        if outage is not None:
            stale = [v for v in mine if t - confirmed.get(v.id, v.created_at) >= UNCONFIRMED_CHECKS * every]
            ended += _end(rt, stale, f"not confirmed for {UNCONFIRMED_CHECKS * cfg.recheck_s} s ({outage})")
            continue
        changed = [v for v in mine if answer.role != v.role]
        for v in mine:
            if v not in changed:  # confirmed; a changed one stays due until its ending is written
                confirmed[v.id] = t
        if changed:
            now_is = f"now {answer.role}" if answer.role else answer.reason
            ended += _end(rt, changed, f"role changed in the directory ({now_is})")
    return ended


def _end(rt: Runtime, views: list[accounts.SignedIn], why: str) -> int:
    """End each session (once: a sign-out or the time-out sweep may have been first) and audit it."""
    return sum(end_session(rt, view, END_REASON, view.source, f"directory: {why}") for view in views)
