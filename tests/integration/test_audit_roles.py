"""deploy/postgres-roles.sql on a real PostgreSQL 15: the server itself keeps the audit trail append-only
for the service's role, and read-only for the compliance role."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from storage import audit, audit_query, db
from storage.models import Instance, Job

pytestmark = pytest.mark.postgres

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "postgres-roles.sql"
KEY = b"\x09" * 32


def _psql_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _as(url: str, role: str) -> str:
    return make_url(url).set(username=role).render_as_string(hide_password=False)


@pytest.fixture
def roles_db(fresh_pg_database):
    """Schema migrated by the owner first, then the role script run (twice: it must be idempotent)."""
    owner = db.engine_from_url(fresh_pg_database)
    db.migrate(owner)
    with db.sessions(owner).begin() as s:
        audit.append(s, KEY, event_type="app.init", actor="os:owner")
    owner.dispose()
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql not found (apt-get install postgresql-client-15)")
    for _ in range(2):
        r = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", _psql_url(fresh_pg_database),
                            "-f", str(SCRIPT)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
    engines = {role: db.engine_from_url(_as(fresh_pg_database, role)) for role in ("cxrd_app", "cxrd_compliance")}
    yield fresh_pg_database, engines
    for e in engines.values():
        e.dispose()


def _refused(engine, sql: str) -> str:
    with pytest.raises(ProgrammingError) as err:
        with engine.begin() as conn:
            conn.execute(text(sql))
    return str(err.value.orig)


def test_application_role_appends_but_cannot_change_or_remove_audit_rows(roles_db):
    _, engines = roles_db
    app = engines["cxrd_app"]
    assert db.migrate(app) == db.head_revision()  # the service's start-up migrate is a no-op at head
    with db.sessions(app).begin() as s:
        row = audit.append(s, KEY, event_type="app.start", actor="os:cxrd")
        assert row.seq == 2
    for sql in ("UPDATE audit_events SET outcome = 12 WHERE seq = 1",
                "DELETE FROM audit_events WHERE seq = 2",
                "TRUNCATE audit_events"):
        assert "permission denied" in _refused(app, sql)
    assert "must be owner" in _refused(app, "DROP TABLE audit_events")
    with db.sessions(app)() as s:
        report = audit.verify(s, KEY)
    assert report.ok and report.rows == 2


def test_application_role_keeps_full_rights_on_its_working_tables(roles_db):
    _, engines = roles_db
    sessions = db.sessions(engines["cxrd_app"])
    with sessions.begin() as s:
        inst = Instance(sop_instance_uid="2.25.1", study_uid="2.25.2", series_uid="2.25.3",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.1", state="received")
        s.add(inst)
        s.flush()
        s.add(Job(instance_id=inst.id))
    with sessions.begin() as s:
        s.execute(text("UPDATE instances SET state = 'predicted'"))
        s.execute(text("DELETE FROM jobs"))
        s.execute(text("DELETE FROM instances"))
    assert "permission denied" in _refused(engines["cxrd_app"], "CREATE TABLE sneaky (x int)")
    assert "permission denied" in _refused(engines["cxrd_app"], "UPDATE alembic_version SET version_num = 'x'")


def test_compliance_role_can_only_read_the_audit_trail(roles_db):
    _, engines = roles_db
    comp = engines["cxrd_compliance"]
    with db.sessions(comp)() as s:
        rows = audit_query.query(s, audit_query.AuditFilter(events=("app.*",)))
        assert [r["event_type"] for r in rows] == ["app.init"]
        assert audit.verify(s, KEY).ok
    assert "permission denied" in _refused(
        comp, "INSERT INTO audit_events (seq, occurred_at, event_id, event_type, action, outcome, actor, host, "
              "study_uid, object_uid, details, prev_hash, hash) VALUES (99, '', '', '', 'E', 0, '', '', '', '', "
              "'{}', '', '')")
    assert "permission denied" in _refused(comp, "UPDATE audit_events SET outcome = 4")
    assert "permission denied" in _refused(comp, "DELETE FROM audit_events")
    assert "permission denied" in _refused(comp, "SELECT count(*) FROM instances")
    assert "permission denied" in _refused(comp, "SELECT count(*) FROM reid_map")


def test_the_cli_runs_as_the_application_role(roles_db, tmp_path):
    url, _ = roles_db
    import os
    import sys
    env = {**os.environ, "CXRD_STORAGE__STATE_DIR": str(tmp_path / "var"),
           "CXRD_STORAGE__DATABASE_URL": _as(url, "cxrd_app")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    cxrd = str(Path(sys.executable).with_name("cxrd"))
    r = subprocess.run([cxrd, "init"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # rows 1 (app.init) were written with another key: verify names row 1, and records its own use
    r = subprocess.run([cxrd, "audit", "query", "--event", "audit.*", "--format", "json"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([cxrd, "audit", "verify"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "row 1" in r.stderr
    # a read-only account cannot record the use of the audit log, so it is shown nothing (fail closed)
    env["CXRD_STORAGE__DATABASE_URL"] = _as(url, "cxrd_compliance")
    r = subprocess.run([cxrd, "audit", "query", "--format", "json"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and r.stdout == "" and "cannot record this use" in r.stderr
