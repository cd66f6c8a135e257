"""Schema from migrations only, on SQLite and on a real PostgreSQL 15 server."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from storage import db
from storage.errors import DatabaseUnavailable
from storage.rows import IngestRows
from storage.models import Base

EXPECTED_TABLES = {"sent_reports", "console_users", "console_sessions", "console_signin_failures", "alembic_version", "audit_events", "instances", "jobs", "labels",
                   "predictions", "reid_map", "results", "retrain_runs"}


def _assert_models_match_schema(engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    assert diff == [], f"models and migrations disagree; add an Alembic revision: {diff}"


def test_sqlite_migrates_from_empty_idempotently_with_pragmas(tmp_path):
    engine = db.engine_from_url(f"sqlite:///{tmp_path / 'sub' / 'cxrd.db'}")
    assert db.schema_revision(engine) is None
    assert db.migrate(engine) == db.head_revision()
    assert db.migrate(engine) == db.head_revision()  # second run changes nothing
    assert set(db.table_names(engine)) == EXPECTED_TABLES
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    _assert_models_match_schema(engine)


@pytest.mark.postgres
def test_postgresql_migrates_from_empty(fresh_pg_database):
    engine = db.engine_from_url(fresh_pg_database)
    assert db.schema_revision(engine) is None
    assert db.migrate(engine) == db.head_revision()
    assert db.migrate(engine) == db.head_revision()
    assert set(db.table_names(engine)) == EXPECTED_TABLES
    _assert_models_match_schema(engine)
    engine.dispose()


def test_unreachable_database_is_one_clear_error():
    engine = db.engine_from_url("postgresql+psycopg://cxrd:pw@127.0.0.1:1/cxrd")
    with pytest.raises(DatabaseUnavailable) as err:
        db.ping(engine)
    message = str(err.value)
    assert message.startswith("database postgresql+psycopg://cxrd:***@127.0.0.1:1/cxrd:")
    assert "pw" not in message.replace("psycopg", "")


def test_ingest_rows_report_an_unreachable_database_as_the_same_error():
    engine = db.engine_from_url("postgresql+psycopg://cxrd:pw@127.0.0.1:1/cxrd")
    rows = IngestRows(engine, b"k" * 32)
    with pytest.raises(DatabaseUnavailable) as err:
        with rows.transaction():
            pass
    assert str(err.value) == "database unavailable (OperationalError)"


def test_invalid_url_is_one_clear_error():
    with pytest.raises(DatabaseUnavailable, match="not a valid SQLAlchemy URL"):
        db.engine_from_url("not a url")
