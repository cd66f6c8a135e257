"""Exactly one daemon runs the retraining schedule, from configuration, with nothing read from the database."""
from __future__ import annotations

import time

import pickle

from sqlalchemy import create_engine, inspect, text


class _Planted:
    """What an insider with write access to the database would plant: unpickling it creates a file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_job_row(db_path, marker) -> None:
    engine = create_engine(f"sqlite:///{db_path}")
    with engine.begin() as c:
        c.execute(text("CREATE TABLE IF NOT EXISTS apscheduler_jobs (id VARCHAR(191) PRIMARY KEY, "
                       "next_run_time FLOAT, job_state BLOB NOT NULL)"))
        c.execute(text("INSERT INTO apscheduler_jobs VALUES ('maintenance', 0, :state)"),
                  {"state": pickle.dumps(_Planted(str(marker)))})
    engine.dispose()


def test_one_leader_among_daemons_sharing_state_and_no_job_store(daemon_factory, tmp_path):
    shared = tmp_path / "shared"
    env = {"CXRD_RETRAIN__ENABLED": "true", "CXRD_RETRAIN__SCHEDULE": "15 2 * * *",
           "CXRD_STORAGE__RETENTION_DAYS": "3650", "CXRD_MODEL__WORKERS": "0"}
    first = daemon_factory(env, state_dir=shared).start()
    second = daemon_factory(env, state_dir=shared).start()
    time.sleep(3)
    logs = [first.log_text(), second.log_text()]
    assert sum("event=scheduler.leader" in log for log in logs) == 1, logs
    leader = first if "event=scheduler.leader" in logs[0] else second
    leader_line = next(line for line in leader.log_text().splitlines() if "event=scheduler.leader" in line)
    assert "cxrd-retrain" in leader_line and "cxrd-retention-purge" in leader_line, leader_line
    engine = create_engine(f"sqlite:///{shared / 'cxrd.db'}")
    assert "apscheduler_jobs" not in inspect(engine).get_table_names()
    other = second if leader is first else first
    assert leader.stop() == 0
    # The other daemon takes over within its retry interval (10 s) once the lock is free.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "event=scheduler.leader" not in other.log_text():
        time.sleep(0.5)
    assert "event=scheduler.leader" in other.log_text()
    assert other.stop() == 0


def test_a_pickled_job_planted_in_the_database_is_never_unpickled(daemon_factory, tmp_path):
    """Planted before the upgrade (the table still exists) and after it (an insider re-creates the
    table): the elected daemon runs its schedule from configuration and never reads the row."""
    env = {"CXRD_RETRAIN__ENABLED": "true", "CXRD_RETRAIN__SCHEDULE": "* * * * *",
           "CXRD_STORAGE__RETENTION_DAYS": "3650", "CXRD_MODEL__WORKERS": "0"}
    from storage import audit_anchor, db
    d = daemon_factory(env)
    assert d.cli("init").returncode == 0  # the keys; the database is then replaced by a 0001 one
    (d.state_dir / "cxrd.db").unlink()
    (d.state_dir / audit_anchor.FILE_NAME).unlink()
    engine = db.engine_from_url(f"sqlite:///{d.state_dir / 'cxrd.db'}")
    assert db.migrate(engine, "0001") == "0001"  # as the first release left it: the job store exists
    engine.dispose()
    before, after = tmp_path / "unpickled-before-upgrade", tmp_path / "unpickled-after-upgrade"
    _plant_job_row(d.state_dir / "cxrd.db", before)
    d.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "event=scheduler.leader" not in d.log_text():
        time.sleep(0.2)
    assert "event=scheduler.leader" in d.log_text()
    assert not before.exists()
    engine = create_engine(f"sqlite:///{d.state_dir / 'cxrd.db'}")
    assert "apscheduler_jobs" not in inspect(engine).get_table_names()  # migration 0002 dropped it
    _plant_job_row(d.state_dir / "cxrd.db", after)
    assert d.stop() == 0
    d.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and d.log_text(since_start=True).count("event=scheduler.leader") < 1:
        time.sleep(0.2)
    time.sleep(1)
    assert "event=scheduler.leader" in d.log_text(since_start=True)
    assert not before.exists() and not after.exists()
    assert d.stop() == 0
