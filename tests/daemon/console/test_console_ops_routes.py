"""The operations and model pages in-process (Starlette's TestClient on the real app and database):
roles enforced on the server, numbers from the database, Retry and promote/rollback audited."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from storage import audit
from storage.models import Instance, Result

from console_ops_harness import Harness

OPS_GETS = ("/operations", "/operations?hours=168", "/models", "/models/v1")
OPS_POSTS = ("/operations/results/retry", "/models/promote", "/models/rollback")


@pytest.fixture()
def harness(console_client) -> Harness:  # noqa: ANN001
    return Harness(console_client)


def _populate(rt) -> None:
    now = datetime.now(timezone.utc)
    with rt.sessions.begin() as s:
        for i, state in enumerate(["received", "predicted", "predicted", "failed", "reported"]):
            s.add(Instance(sop_instance_uid=f"2.25.{900 + i}", study_uid=f"2.25.{800 + i}", series_uid="2.25.7",
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.1", state=state, received_at=now - timedelta(minutes=i),
                           vault_object=f"o{i}", size_bytes=100, calling_aet="PACS1",
                           error="model failed: ValueError" if state == "failed" else ""))
        s.add_all([Result(study_uid="2.25.801", model_version="v1", kind="sr", state="failed", attempts=8,
                          last_error="C-STORE refused: 0xA700"),
                   Result(study_uid="2.25.801", model_version="v1", kind="heatmap", state="failed", attempts=8),
                   Result(study_uid="2.25.802", model_version="v1", kind="sr", state="failed", attempts=8)])
        for _ in range(2):
            audit.append(s, rt.keys.audit_key, event_type="association.accepted", actor="aet:PACS1", host="10.1.1.1")
        audit.append(s, rt.keys.audit_key, event_type="association.rejected", outcome=4, actor="aet:ROGUE",
                     host="10.9.9.9", details={"reason": "calling AE title not allowed", "count": 5})


def test_compliance_gets_403_on_every_operations_url(harness):
    c = harness.client("carol", "compliance")
    for url in OPS_GETS:
        assert c.http.get(url).status_code == 403, url
    for url in OPS_POSTS:
        assert c.http.post(url, data={"csrf_token": c.csrf_token, "confirm": "x", "version": "v1"}).status_code == 403, url


def test_admin_sees_models_but_not_the_dashboard_and_operations_cannot_promote(harness):
    admin, ops = harness.client("ada", "admin"), harness.client("otto", "operations")
    assert admin.http.get("/operations").status_code == 403
    assert admin.http.get("/models").status_code == 200
    for url in ("/models/promote", "/models/rollback"):
        assert ops.http.post(url, data={"csrf_token": ops.csrf_token, "confirm": "v1", "version": "v1"}).status_code == 403


def test_signed_out_is_sent_to_sign_in_and_posts_need_the_csrf_token(harness):
    anon = harness.make()
    r = anon.http.get("/operations")
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")
    ops = harness.client("otto", "operations")
    assert ops.http.post("/operations/results/retry", data={}).status_code == 403  # no token
    assert harness.audit_rows("results.retry") == []


def test_dashboard_numbers_match_the_database(harness):
    _populate(harness.rt)
    page = harness.client("otto", "operations").http.get("/operations").text
    assert re.search(r'data-state="predicted">2<', page) and re.search(r'data-state="failed">1<', page)
    assert 'id="glance-stored">5<' in page and 'id="glance-results-failed">3<' in page
    assert 'data-accepted="PACS1">2<' in page and 'data-refused="ROGUE">5<' in page
    assert "model failed: ValueError" in page and "C-STORE refused: 0xA700" in page
    assert page.count("<svg") >= 3 and "<script" not in page and 'style="' not in page
    assert "Images per hour" in page and "KEK id" in page
    kek = harness.rt.keys.keyring.primary_id
    assert kek in page
    assert harness.rt.keys.keyring.kek(kek).hex() not in page  # never key material


def test_retry_requeues_like_the_cli_and_is_audited_with_the_console_user(harness):
    _populate(harness.rt)
    ops = harness.client("otto", "operations")
    r = ops.http.post("/operations/results/retry", data={"csrf_token": ops.csrf_token, "study_uid": "2.25.801"})
    assert r.status_code == 303 and "retried=2" in r.headers["location"]
    from sqlalchemy import select
    with harness.rt.read_sessions() as s:
        states = dict(s.execute(select(Result.kind, Result.state).where(Result.study_uid == "2.25.801")).all())
        other = s.scalar(select(Result.state).where(Result.study_uid == "2.25.802"))
    assert states == {"sr": "pending", "heatmap": "pending"} and other == "failed"
    rows = harness.audit_rows("results.retry")
    assert [(x["actor"], x["host"], x["study_uid"], x["details"]["requeued"]) for x in rows] == [
        ("console:otto", "10.9.8.7", "2.25.801", 2)]
    assert "2 result(s) set back to pending" in ops.http.get(r.headers["location"]).text
    bad = ops.http.post("/operations/results/retry", data={"csrf_token": ops.csrf_token, "study_uid": "1.2.3"})
    assert "error=" in bad.headers["location"] and len(harness.audit_rows("results.retry")) == 1
    ops.http.post("/operations/results/retry", data={"csrf_token": ops.csrf_token})  # all remaining failed
    assert harness.audit_rows("results.retry")[-1]["details"]["requeued"] == 1


def test_database_down_is_shown_not_crashed(harness, monkeypatch):
    from storage.errors import DatabaseUnavailable

    from daemon.console import ops_queries
    def down(*_a, **_k):
        raise DatabaseUnavailable("database sqlite:///x: unable to open database file")
    monkeypatch.setattr(ops_queries, "images_by_state", down)
    page = harness.client("otto", "operations").http.get("/operations")
    assert page.status_code == 200 and "The database is not reachable" in page.text and "KEK id" in page.text
