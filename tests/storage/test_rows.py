"""storage.rows: the ingest transaction on the driver's cursor stores what the ORM would, on SQLite
and PostgreSQL, and maps constraint and connection failures to its two exceptions."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import create_engine, select, text

from storage import audit, db, reid
from storage.errors import DatabaseUnavailable
from storage.models import AuditEvent, Instance, Job, ReidEntry
from storage.rows import IngestRows, RowConflict

AUDIT_KEY, REID_KEY = b"\x0a" * 32, b"\x0b" * 32


def _store(rows: IngestRows, sop: str) -> int:
    with rows.transaction() as tx:
        instance_id = tx.instance(sop_instance_uid=sop, study_uid="2.25.1", series_uid="2.25.2",
                                  sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", modality="DX",
                                  view_position="PA", transfer_syntax="1.2.840.10008.1.2.1", state="received",
                                  vault_object="obj-" + sop, size_bytes=1234, burned_in_annotation="no",
                                  calling_aet="PACS")
        tx.job(instance_id=instance_id, kind="predict")
        tx.reid_entry(sop_instance_uid=sop, study_uid="2.25.1",
                      sealed=reid.seal_reid(REID_KEY, sop, {"study_uid": "1.2.3"}))
        tx.audit_event(event_type="instance.stored", study_uid="2.25.1", object_uid=sop,
                       details={"bytes": 1234}, actor="aet:PACS", host="127.0.0.1")
    return instance_id


def _orm_twin(engine, sop: str) -> None:  # noqa: ANN001
    """The same rows through the ORM, as the rest of cxrd writes them."""
    with db.sessions(engine)() as s, s.begin():
        inst = Instance(sop_instance_uid=sop, study_uid="2.25.1", series_uid="2.25.2",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", modality="DX", view_position="PA",
                        transfer_syntax="1.2.840.10008.1.2.1", state="received", vault_object="obj-" + sop,
                        size_bytes=1234, burned_in_annotation="no", calling_aet="PACS")
        s.add(inst)
        s.flush()
        s.add(Job(instance_id=inst.id, kind="predict"))
        reid.store_entry(s, REID_KEY, pseudo_sop_uid=sop, pseudo_study_uid="2.25.1", original={"study_uid": "1.2.3"})
        audit.append(s, AUDIT_KEY, event_type="instance.stored", study_uid="2.25.1", object_uid=sop,
                     details={"bytes": 1234}, actor="aet:PACS", host="127.0.0.1")


def _stored_text(engine, table: str, where: str) -> dict[str, str]:  # noqa: ANN001
    """Each column as the database itself renders it (the bytes a query compares against)."""
    with engine.connect() as c:
        cols = [r[1] for r in c.execute(text(f"PRAGMA table_info({table})"))] if engine.dialect.name == "sqlite" \
            else list(c.execute(text(f"SELECT * FROM {table} LIMIT 0")).keys())
        row = c.execute(text(f"SELECT {', '.join(f'CAST({col} AS TEXT)' for col in cols)} FROM {table} WHERE {where}")).one()
    return dict(zip(cols, row))


def _shape(timestamp: str) -> str:
    """'2026-11-26 05:23:28.5282+00' -> '0000-00-00 00:00:00.f+00': the format, not the time."""
    return re.sub(r"\d", "0", re.sub(r"\.\d+", ".f", timestamp))


def _check_backend(engine) -> None:  # noqa: ANN001
    db.migrate(engine)
    rows = IngestRows(engine, AUDIT_KEY)
    first = _store(rows, "2.25.100")
    _orm_twin(engine, "2.25.200")
    fast = _stored_text(engine, "instances", f"id = {first}")
    orm = _stored_text(engine, "instances", "sop_instance_uid = '2.25.200'")
    # Same shape of every value (timestamps differ only in their digits, never in their format).
    for col in fast:
        if col in ("id", "sop_instance_uid", "vault_object"):
            continue
        a, b = fast[col], orm[col]
        assert (a is None) == (b is None), col
        if a is not None and col.endswith("_at"):
            assert _shape(a) == _shape(b), (col, a, b)
        else:
            assert a == b, col
    fast_job = _stored_text(engine, "jobs", f"instance_id = {first}")
    orm_job = _stored_text(engine, "jobs", "instance_id <> %d" % first)
    assert {k: v for k, v in fast_job.items() if not k.endswith(("_at", "before", "id"))} == \
        {k: v for k, v in orm_job.items() if not k.endswith(("_at", "before", "id"))}
    assert _shape(fast_job["not_before"]) == _shape(orm_job["not_before"])
    with db.sessions(engine)() as s:
        inst = s.get(Instance, first)
        assert inst.received_at.tzinfo is not None and inst.state == "received"
        assert s.scalar(select(Job.state).where(Job.instance_id == first)) == "queued"
        assert reid.open_entry(s, REID_KEY, "2.25.100") == {"study_uid": "1.2.3"}
        assert s.scalar(select(ReidEntry.study_uid).where(ReidEntry.sop_instance_uid == "2.25.100")) == "2.25.1"
        report = audit.verify(s, AUDIT_KEY)
        assert report.ok and report.rows == 2, report
        assert [e.object_uid for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))] == ["2.25.100", "2.25.200"]

    # A duplicate SOP Instance UID: RowConflict, and nothing of the attempt stays.
    with pytest.raises(RowConflict):
        _store(rows, "2.25.100")
    with db.sessions(engine)() as s:
        assert s.scalar(select(text("count(*)")).select_from(Instance.__table__)) == 2
        assert audit.verify(s, AUDIT_KEY).rows == 2
    _store(rows, "2.25.300")  # the connection that saw the conflict is usable again
    rows.audit(event_type="association.accepted", actor="aet:PACS", host="127.0.0.1")  # on its own
    with db.sessions(engine)() as s:
        report = audit.verify(s, AUDIT_KEY)
        assert report.ok and report.rows == 4, report
        assert s.scalars(select(AuditEvent.event_type).order_by(AuditEvent.seq.desc())).first() == \
            "association.accepted"


def test_sqlite_rows_match_the_orm_and_conflicts_roll_back(tmp_path):
    _check_backend(db.engine_from_url(f"sqlite:///{tmp_path}/cxrd.db"))


@pytest.mark.postgres
def test_postgres_rows_match_the_orm_and_conflicts_roll_back(fresh_pg_database):
    _check_backend(db.engine_from_url(fresh_pg_database))


@pytest.mark.postgres
def test_postgres_lost_connections_are_unavailable_then_replaced(fresh_pg_database):
    engine = db.engine_from_url(fresh_pg_database)
    db.migrate(engine)
    rows = IngestRows(engine, AUDIT_KEY)
    _store(rows, "2.25.1")
    dbname = fresh_pg_database.rsplit("/", 1)[1]
    admin = create_engine(fresh_pg_database.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false'))
        c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": dbname})
    try:
        with pytest.raises(DatabaseUnavailable):
            _store(rows, "2.25.2")
    finally:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    assert _store(rows, "2.25.3")
    with db.sessions(engine)() as s:
        assert sorted(s.scalars(select(Instance.sop_instance_uid))) == ["2.25.1", "2.25.3"]
        assert audit.verify(s, AUDIT_KEY).ok
