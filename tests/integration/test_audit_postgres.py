"""The audit chain on a real PostgreSQL 15: several processes append at once, one unbroken chain."""
from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from storage import audit, db

KEY = b"\x05" * 32
WRITER = """
import sys
from storage import audit, db
engine = db.engine_from_url(sys.argv[1])
sessions = db.sessions(engine)
for i in range(int(sys.argv[2])):
    with sessions.begin() as s:
        audit.append(s, b"\\x05" * 32, event_type="instance.stored", actor=sys.argv[3], details={"i": i})
"""


@pytest.fixture
def pg_audit_url(postgres_url):
    name = "audit_" + uuid.uuid4().hex[:8]
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    db.migrate(db.engine_from_url(url))
    yield url
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.mark.postgres
def test_concurrent_processes_append_one_chain_and_tampering_is_found(pg_audit_url):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, pg_audit_url, "25", f"P{i}"])
             for i in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    engine = db.engine_from_url(pg_audit_url)
    with db.sessions(engine)() as s:
        report = audit.verify(s, KEY)
    assert report.ok and report.rows == 100
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET outcome = 12 WHERE seq = 40"))
    with db.sessions(engine)() as s:
        report = audit.verify(s, KEY)
    assert not report.ok and report.first_bad_seq == 40
    engine.dispose()
