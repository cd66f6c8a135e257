"""The dashboard's aggregate queries against a migrated database: counts match the rows, hours bucket
right, associations are counted per calling AE, and lists carry pseudonyms and reasons only."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from cxrmodel.labels import LABELS
from daemon.console import ops_queries as Q
from storage import audit, db
from storage.models import Instance, Job, Prediction, Result

KEY = b"k" * 32
NOW = datetime(2026, 11, 29, 17, 30, tzinfo=timezone.utc)


def _instance(i: int, state: str, received: datetime, **kw) -> Instance:
    return Instance(sop_instance_uid=f"2.25.{1000 + i}", study_uid=f"2.25.{50 + i % 3}", series_uid="2.25.9",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.1", state=state, received_at=received,
                    updated_at=received, size_bytes=1000 + i, vault_object=f"obj{i}", calling_aet="PACS1", **kw)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, engine):
    """The migrated SQLite database, or a fresh database on the real PostgreSQL server: the hour
    buckets, latencies and JSON counts are backend-specific SQL."""
    if request.param == "sqlite":
        yield engine
        return
    url = request.getfixturevalue("fresh_pg_database")
    pg = db.engine_from_url(url)
    db.migrate(pg)
    yield pg
    pg.dispose()


@pytest.fixture()
def populated(backend):
    engine = backend
    with db.sessions(engine).begin() as s:
        insts = [_instance(0, "received", NOW - timedelta(minutes=5)),
                 _instance(1, "predicted", NOW - timedelta(hours=1, minutes=10)),
                 _instance(2, "predicted", NOW - timedelta(hours=1, minutes=20)),
                 _instance(3, "failed", NOW - timedelta(hours=3), error="model failed: RuntimeError"),
                 _instance(4, "reported", NOW - timedelta(hours=30))]  # outside a 24 h window
        s.add_all(insts)
        s.flush()
        s.add(Job(instance_id=insts[0].id, state="queued", created_at=NOW - timedelta(minutes=5),
                  not_before=NOW + timedelta(minutes=1)))
        for inst, secs in ((insts[1], 4.0), (insts[2], 10.0)):
            s.add_all(Prediction(instance_id=inst.id, model_version="m1", label=lab, probability=0.1, threshold=0.5,
                                 positive=False, created_at=inst.received_at + timedelta(seconds=secs))
                      for lab in LABELS)
        s.add_all([Result(study_uid="2.25.51", model_version="m1", kind="sr", state="failed", attempts=8,
                          last_error="C-STORE refused: 0xA700"),
                   Result(study_uid="2.25.52", model_version="m1", kind="sr", state="sent"),
                   Result(study_uid="2.25.50", model_version="m1", kind="sr", state="pending")])
        for _ in range(3):
            audit.append(s, KEY, event_type="association.accepted", actor="aet:PACS1", host="10.0.0.1")
        audit.append(s, KEY, event_type="association.accepted", actor="aet:MODALITY", host="10.0.0.2")
        audit.append(s, KEY, event_type="association.rejected", outcome=4, actor="aet:EVIL", host="10.0.0.9",
                     details={"reason": "calling AE title not allowed", "count": 7})
        audit.append(s, KEY, event_type="association.rejected", outcome=4, actor="", host="10.0.0.8",
                     details={"reason": "host not allowed", "count": 2, "calling_aets": ["A", "B"]})
        audit.append(s, KEY, event_type="instance.rejected", outcome=4, actor="aet:PACS1", host="10.0.0.1",
                     study_uid="2.25.77", object_uid="2.25.78", details={"reason": "not a chest radiograph"})
        audit.append(s, KEY, event_type="instance.ignored", actor="aet:PACS1", host="10.0.0.1")
    return engine


def test_counts_match_the_rows(populated):
    with db.sessions(db.readonly(populated))() as s:
        assert Q.images_by_state(s) == {"received": 1, "predicted": 2, "reported": 1, "failed": 1,
                                        "quarantined": 0, "not_analysed": 0}
        assert Q.not_stored(s) == {"ignored": 1, "rejected": 1, "refused": 0}
        q = Q.queue(s, NOW)
        assert (q["depth"], q["delayed"]) == (1, 1)
        assert q["oldest_age_s"] == pytest.approx(300, abs=1)
        r = Q.results_summary(s)
        assert r["by_state"] == {"failed": 1, "sent": 1, "pending": 1}
        assert [x["state"] for x in r["open"]] == ["failed", "pending"]  # failed first
        assert r["open"][0]["last_error"] == "C-STORE refused: 0xA700"
        assert Q.vault_size(s) == {"objects": 5, "bytes": 5010}
        assert Q.database_size(s) > 0


def test_hours_bucket_receipts_predictions_and_latency(populated):
    with db.sessions(populated)() as s:
        buckets = Q.hourly(s, NOW, 24)
    assert len(buckets) == 24 and buckets[-1].start == datetime(2026, 11, 29, 17, tzinfo=timezone.utc)
    by_hour = {b.start.hour: b for b in buckets}
    assert by_hour[17].received == 1 and by_hour[17].predicted == 0
    assert by_hour[16].received == 2 and by_hour[16].predicted == 2
    assert by_hour[16].latency_median_s == pytest.approx(4.0, abs=0.01)
    assert by_hour[16].latency_p95_s == pytest.approx(10.0, abs=0.01)
    assert by_hour[16].latency_sampled == 2 and by_hour[17].latency_median_s is None
    assert by_hour[14].received == 1
    assert sum(b.received for b in buckets) == 4  # the 30-hour-old image is outside the window


def test_associations_per_calling_ae(populated):
    with db.sessions(populated)() as s:
        counts = {a.calling_aet: a for a in Q.associations(s, NOW - timedelta(days=1))}
        later = Q.associations(s, datetime.now(timezone.utc) + timedelta(hours=1))
    assert (counts["PACS1"].accepted, counts["PACS1"].refused) == (3, 0)
    assert counts["MODALITY"].accepted == 1
    assert (counts["EVIL"].accepted, counts["EVIL"].refused) == (0, 7)  # the row's count, not one
    assert counts["(several titles)"].refused == 2
    assert later == []


def test_failures_list_reasons_with_pseudonyms_only(populated):
    with db.sessions(populated)() as s:
        failures = Q.recent_failures(s)
    reasons = {f["reason"] for f in failures}
    assert "model failed: RuntimeError" in reasons and "not a chest radiograph" in reasons
    assert all(f["study_uid"].startswith("2.25.") for f in failures)
    assert json.dumps(failures)  # plain data for the template


def test_model_events_name_actor_and_version(engine):
    with db.sessions(engine).begin() as s:
        audit.append(s, KEY, event_type="model.promoted", actor="console:alice", host="h",
                     details={"version": "v2", "previous": "v1", "forced": False, "source": "127.0.0.1"})
        audit.append(s, KEY, event_type="model.rollback", actor="os:bob", host="h",
                     details={"version": "v1", "previous": "v2"})
    with db.sessions(engine)() as s:
        events = Q.model_events(s)
    assert [(e["event"], e["actor"], e["version"]) for e in events] == [
        ("rollback", "os:bob", "v1"), ("promoted", "console:alice", "v2")]
