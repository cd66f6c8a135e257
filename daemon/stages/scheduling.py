"""Scheduled retraining, retention purge and monitoring: APScheduler in memory, one leader among daemons.

The schedule lives in configuration, so the leader adds its jobs afresh each time it is elected and
keeps them in memory. Nothing is stored in or read back from the database: a persistent APScheduler
job store unpickles its rows, which would let anyone able to write that table run code in the
process that holds the master key (migration 0002 drops the table). A missed run is not replayed
after a restart; the next cron time comes, and `cxrd retrain` runs one now.

Exactly one daemon runs the schedule: the one holding the leader lock — a session-level `pg_advisory_lock` on PostgreSQL (released
by the server when that daemon dies), an `flock` on `{state_dir}/scheduler.lock` with SQLite (one
host). The others retry every `RETRY_S`. The job itself (`daemon.stages.retraining.retrain_once`) is
coalesced, never runs twice at once, and trains in a child process. The monitoring job
(`daemon.stages.monitoring.scheduled`) runs every `monitor.interval_minutes`, the first at election.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

from daemon.ops.logs import event

log = logging.getLogger("cxrd.scheduler")

LEADER_LOCK_ID = 7437003  # storage.db 7437001 migrations, storage.audit 7437002 audit chain
RETRY_S = 10.0
JOB_ID = "cxrd-retrain"
PURGE_JOB_ID = "cxrd-retention-purge"
MONITOR_JOB_ID = "cxrd-monitor"


class LeaderLock:
    """Held for the life of the process by at most one daemon."""

    def __init__(self, engine: Engine, state_dir: Path):
        self.engine, self.state_dir = engine, state_dir
        self._conn = None
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK_ID}).scalar():
                conn.commit()
                self._conn = conn
                return True
            conn.close()
            return False
        fd = os.open(self.state_dir / "scheduler.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEADER_LOCK_ID})
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RetrainScheduler:
    """Stage: become leader, then run the cron schedule; `run_now()` for a manual trigger."""

    name = "scheduler"

    def __init__(self, *, engine: Engine, state_dir: Path, cron: str | None, purge_daily: bool = False,
                 job: str = "daemon.stages.retraining:scheduled",
                 purge_job: str = "daemon.stages.retraining:scheduled_purge", monitor_minutes: int = 0,
                 monitor_job: str = "daemon.stages.monitoring:scheduled"):
        self.lock = LeaderLock(engine, state_dir)
        self.engine, self.cron, self.purge_daily = engine, cron, purge_daily
        # "module:function" references, resolved when the leader adds the jobs, so a daemon that never
        # leads never imports the training code.
        self.job, self.purge_job = job, purge_job
        self.monitor_job, self.monitor_minutes = monitor_job, monitor_minutes  # 0 = no monitoring job
        self.scheduler = None
        self.leader = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._campaign, name="cxrd-scheduler", daemon=True)
        self._thread.start()

    def _campaign(self) -> None:
        while not self._stop.is_set():
            try:
                if self.lock.try_acquire():
                    self._lead()
                    return
            except Exception as exc:  # database hiccup: try again later
                log.error("scheduler.election_failed", exc_info=exc)
            self._stop.wait(RETRY_S)

    def _lead(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger

        self.leader = True
        self.scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                           "misfire_grace_time": 6 * 3600})
        if self.cron:
            self.scheduler.add_job(self.job, CronTrigger.from_crontab(self.cron), args=["schedule"], id=JOB_ID,
                                   name="retrain from new labeled data")
        if self.purge_daily:
            self.scheduler.add_job(self.purge_job, CronTrigger.from_crontab("30 3 * * *"),
                                   id=PURGE_JOB_ID, name="retention purge")
        if self.monitor_minutes:
            from apscheduler.triggers.interval import IntervalTrigger
            self.scheduler.add_job(self.monitor_job, IntervalTrigger(minutes=self.monitor_minutes), id=MONITOR_JOB_ID,
                                   name="drift and live performance", next_run_time=datetime.now(timezone.utc))
        self.scheduler.start()
        jobs = {j.id: j.next_run_time for j in self.scheduler.get_jobs()}
        event(log, "scheduler.leader", cron=self.cron or "off",
              next_run={k: v.isoformat() if v else "" for k, v in jobs.items()})

    def stop(self) -> None:
        self._stop.set()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        self.lock.release()

    def healthy(self) -> bool:
        return self._thread is not None and (self._thread.is_alive() or self.leader)
