"""Leases: who holds a claim on a row, and when a claim whose holder is gone is taken back.

The worker claims `jobs` rows (`running`, `claimed_by`, `claimed_at`) and the results sender claims
`results` rows (`sending`, `claimed_by`, `next_attempt_at` pushed `LEASE_S` ahead). A claim names its
holder by `worker_id()`, `host:pid:nonce`: the host and pid let a daemon on the same host see at once
that a holder's process is gone; the nonce keeps two stages of one process (or a reused pid) apart.
A holder on another host, or one whose process cannot be checked, loses its claim when the lease
runs out, so a claim is never held forever by a daemon that died.
"""
from __future__ import annotations

import os
import socket
import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.models import Job, utcnow

LEASE_S = 300.0  # longer than any one batch or send takes, so a live holder never loses its claim


def worker_id() -> str:
    """A new holder id, `host:pid:nonce`, unique per stage instance."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_gone(holder: str, me: str) -> bool:
    """True when `holder` ran on this host (and is not `me`) and its process no longer exists."""
    host, _, rest = holder.partition(":")
    pid = rest.split(":", 1)[0]
    return host == me.split(":", 1)[0] and holder != me and pid.isdigit() and not _pid_alive(int(pid))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def release_dead_claims(sessions: sessionmaker[Session], me: str) -> int:
    """Put back `running` jobs whose holder is gone or whose lease ran out; returns how many."""
    now = utcnow()
    released = 0
    with sessions() as session, session.begin():
        rows = session.execute(select(Job.id, Job.claimed_by, Job.claimed_at).where(Job.state == "running")).all()
        for job_id, holder, claimed_at in rows:
            expired = claimed_at is None or (now - claimed_at).total_seconds() > LEASE_S
            if expired or holder_is_gone(holder, me):
                session.execute(update(Job).where(Job.id == job_id, Job.state == "running")
                                .values(state="queued", claimed_by="", claimed_at=None))
                released += 1
    return released
