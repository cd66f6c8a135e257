"""Leases: a claim whose holder died on this host comes back at once, one on another host only when
its lease runs out, and a live holder's claim is never taken."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import select

from daemon.stages.leases import LEASE_S, holder_is_gone, release_dead_claims, worker_id
from storage import db
from storage.models import RECEIVED, Instance, Job, utcnow


def ended_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_a_holder_on_this_host_whose_process_ended_is_gone():
    me = worker_id()
    host = me.split(":", 1)[0]
    assert holder_is_gone(f"{host}:{ended_pid()}:0000aaaa", me)
    assert not holder_is_gone(f"{host}:{os.getpid()}:0000aaaa", me)  # alive: another stage of this process
    assert not holder_is_gone(me, me)
    assert not holder_is_gone(f"{host}-elsewhere:{ended_pid()}:0000aaaa", me)  # its pid means nothing here
    assert not holder_is_gone("", me)


def test_release_dead_claims_puts_back_dead_and_expired_claims_only(tmp_path):
    engine = db.engine_from_url(f"sqlite:///{tmp_path / 'cxrd.db'}")
    db.migrate(engine)
    sessions = db.sessions(engine)
    me = worker_id()
    host = me.split(":", 1)[0]
    now = utcnow()
    holders = {
        "dead here": (f"{host}:{ended_pid()}:0000aaaa", now),
        "alive here": (f"{host}:{os.getpid()}:0000bbbb", now),
        "other host, fresh": ("elsewhere:1:0000cccc", now),
        "other host, expired": ("elsewhere:1:0000dddd", now - timedelta(seconds=LEASE_S + 60)),
    }
    with sessions() as s, s.begin():
        for n, (holder, at) in enumerate(holders.values()):
            inst = Instance(sop_instance_uid=f"2.25.{n}", study_uid="2.25.100", series_uid="2.25.101",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", state=RECEIVED)
            s.add(inst)
            s.flush()
            s.add(Job(instance_id=inst.id, state="running", claimed_by=holder, claimed_at=at, attempts=1))

    assert release_dead_claims(sessions, me) == 2

    with sessions() as s:
        jobs = s.execute(select(Job.state, Job.claimed_by).order_by(Job.id)).all()
    assert [tuple(j) for j in jobs] == [("queued", ""), ("running", holders["alive here"][0]),
                                        ("running", holders["other host, fresh"][0]), ("queued", "")]
    engine.dispose()
