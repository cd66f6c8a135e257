"""Image retention purge: crypto-shreds expired images in a real vault, audits each, spares the rest."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from storage import audit, db, keys
from storage.errors import ObjectNotFoundError, VaultError
from storage.models import AuditEvent, Instance, ReidEntry, Result
from storage.retention import RetentionError, purge_expired
from storage.vault import Vault

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def world(tmp_path):
    keys.init_keys(tmp_path / "master.key", tmp_path / "keyring.json")
    k = keys.load_keys(tmp_path / "master.key", tmp_path / "keyring.json")
    vault = Vault(tmp_path / "vault", k.keyring)
    engine = db.engine_from_url(f"sqlite:///{tmp_path / 'cxrd.db'}")
    db.migrate(engine)
    sessions = db.sessions(engine)
    specs = {  # name: (age in days, state, has a pending result for its study)
        "old_reported": (400, "reported", False),
        "old_predicted": (400, "predicted", False),
        "old_waiting": (400, "received", False),
        "old_result_pending": (400, "predicted", True),
        "young": (10, "reported", False),
    }
    with sessions.begin() as s:
        for i, (name, (age, state, pending)) in enumerate(specs.items()):
            vault.put(f"obj{i}", b"pixels %d" % i, fsync=False)
            s.add(Instance(sop_instance_uid=f"2.25.{i}", study_uid=f"2.25.10{i}", series_uid="2.25.9",
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.1", state=state, vault_object=f"obj{i}",
                           received_at=NOW - timedelta(days=age)))
            s.add(ReidEntry(sop_instance_uid=f"2.25.{i}", study_uid=f"2.25.10{i}", sealed=b"sealed"))
            if pending:
                s.add(Result(study_uid=f"2.25.10{i}", model_version="v1", kind="sr", state="pending"))
    yield sessions, vault, k.audit_key, {name: f"obj{i}" for i, name in enumerate(specs)}
    engine.dispose()


def test_expired_images_are_shredded_and_each_deletion_is_audited(world):
    sessions, vault, audit_key, objs = world
    dry = purge_expired(sessions, vault, audit_key, 365, now=NOW, dry_run=True)
    assert (dry.expired, dry.shredded, dry.dry_run) == (2, 0, True)
    assert all(vault.exists(o) for o in objs.values())

    report = purge_expired(sessions, vault, audit_key, 365, now=NOW)
    assert (report.expired, report.shredded, report.missing) == (2, 2, 0)
    for name in ("old_reported", "old_predicted"):
        with pytest.raises((ObjectNotFoundError, VaultError)):
            vault.get(objs[name])
    for name in ("old_waiting", "old_result_pending", "young"):
        assert vault.get(objs[name]).startswith(b"pixels")
    with sessions() as s:
        cleared = s.scalars(select(Instance.sop_instance_uid).where(Instance.vault_object.is_(None))).all()
        events = s.execute(select(AuditEvent.event_type, AuditEvent.object_uid, AuditEvent.details)
                           .order_by(AuditEvent.seq)).all()
        assert audit.verify(s, audit_key).ok
    assert sorted(cleared) == ["2.25.0", "2.25.1"]
    with sessions() as s:  # the purged images' originals are gone with them; the others' stay
        assert sorted(s.scalars(select(ReidEntry.sop_instance_uid)).all()) == ["2.25.2", "2.25.3", "2.25.4"]
    assert [(t, o) for t, o, _ in events] == [("instance.deleted", "2.25.0"), ("instance.deleted", "2.25.1"),
                                              ("purge.expired", "")]
    assert json.loads(events[-1][2])["shredded"] == 2

    again = purge_expired(sessions, vault, audit_key, 365, now=NOW)
    assert again.expired == 0


def test_a_crash_between_shredding_and_commit_is_finished_by_the_next_run(world):
    sessions, vault, audit_key, objs = world
    vault.delete(objs["old_reported"])  # as if the previous run died before its commit
    report = purge_expired(sessions, vault, audit_key, 365, now=NOW)
    assert (report.expired, report.shredded, report.missing) == (2, 1, 1)


def test_zero_retention_is_refused(world):
    sessions, vault, audit_key, _ = world
    with pytest.raises(RetentionError):
        purge_expired(sessions, vault, audit_key, 0)
