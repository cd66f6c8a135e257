"""Exactly one daemon runs the retraining schedule, with its job stored in our database."""
from __future__ import annotations

import time

from sqlalchemy import create_engine, text


def test_one_leader_among_daemons_sharing_state_and_job_in_the_database(daemon_factory, tmp_path):
    shared = tmp_path / "shared"
    env = {"CXRD_RETRAIN__ENABLED": "true", "CXRD_RETRAIN__SCHEDULE": "15 2 * * *",
           "CXRD_STORAGE__RETENTION_DAYS": "3650", "CXRD_MODEL__WORKERS": "0"}
    first = daemon_factory(env, state_dir=shared).start()
    second = daemon_factory(env, state_dir=shared).start()
    time.sleep(3)
    logs = [first.log_text(), second.log_text()]
    assert sum("event=scheduler.leader" in log for log in logs) == 1, logs
    engine = create_engine(f"sqlite:///{shared / 'cxrd.db'}")
    with engine.connect() as c:
        jobs = {row[0] for row in c.execute(text("SELECT id FROM apscheduler_jobs"))}
    assert jobs == {"cxrd-retrain", "cxrd-retention-purge"}
    leader = first if "event=scheduler.leader" in logs[0] else second
    other = second if leader is first else first
    assert leader.stop() == 0
    # The other daemon takes over within its retry interval (10 s) once the lock is free.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "event=scheduler.leader" not in other.log_text():
        time.sleep(0.5)
    assert "event=scheduler.leader" in other.log_text()
    assert other.stop() == 0
