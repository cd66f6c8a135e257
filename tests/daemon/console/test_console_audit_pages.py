"""The compliance pages in process (Starlette's TestClient against `build_app` on a real state):
roles enforced on every route, every use recorded as the CLI records it, original UIDs only by POST
with a reason and never shown, downloads valid and streamed, the chain's state and its first bad row."""
from __future__ import annotations

import json
import re

import pytest
from lxml import etree
from sqlalchemy import text
from starlette.testclient import TestClient

from config import load_settings
from daemon.console import cookies
from daemon.console.app import build_app
from daemon.runtime import Runtime
from storage import accounts, audit, audit_export
from storage.deid import pseudonymize_uid

ORIGINAL = "1.2.826.0.1.3680043.8.498.4242424242"
OTHER_STUDY = "2.25.99999999999999999999"
GET_ROUTES = ["/audit", "/audit?event=association.*", "/audit/events/1", "/audit/chain", "/audit/access",
              "/audit/activity", "/audit/downloads", "/audit/export?format=dicom", "/audit/export?format=csv",
              "/audit/export?format=json&month=2026-10"]
POST_ROUTES = ["/audit/original", "/audit/chain/verify"]


@pytest.fixture
def rt(cli_state) -> Runtime:
    rt = Runtime(load_settings(None))
    study = pseudonymize_uid(rt.keys.uid_key, ORIGINAL)
    with rt.sessions.begin() as s:
        for i in range(40):
            audit.append(s, rt.keys.audit_key, event_type="association.rejected" if i % 4 == 0 else "instance.stored",
                         outcome=4 if i % 4 == 0 else 0, actor="aet:EVIL" if i % 4 == 0 else "aet:MODALITY",
                         host="192.0.2.50", study_uid=study if i % 5 == 0 else OTHER_STUDY,
                         details={"reason": "calling AE title not allowed"} if i % 4 == 0 else {"bytes": 1000 + i})
    return rt


@pytest.fixture
def app(rt):
    return build_app(rt)


def client(app, rt: Runtime, name: str, role: str) -> TestClient:
    with rt.sessions.begin() as s:
        token = accounts.open_session(s, name=name, role=role, via="local", source="testclient")
    c = TestClient(app, follow_redirects=False, client=("10.1.2.3", 50000))
    c.cookies.set(cookies.cookie_name(cookies.SESSION_COOKIE, False), token)
    return c


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html)[1]


def uses(rt: Runtime, after: int = 0) -> list[dict]:
    with rt.read_sessions() as s:
        rows = s.execute(text("SELECT seq, event_id, event_type, outcome, actor, host, study_uid, details "
                              "FROM audit_events WHERE seq > :a AND event_type IN ('audit.query', 'audit.export', "
                              "'audit.verify', 'reid.pseudonymize') ORDER BY seq"), {"a": after}).all()
    return [dict(r._mapping) | {"details": json.loads(r.details)} for r in rows]


def head(rt: Runtime) -> int:
    with rt.read_sessions() as s:
        return s.execute(text("SELECT max(seq) FROM audit_events")).scalar()


def test_operations_and_strangers_get_nothing(app, rt):
    ops = client(app, rt, "oscar", "operations")
    token = csrf_of(ops.get("/").text if ops.get("/").status_code == 200 else ops.get("/operations").text)
    before = head(rt)
    for url in GET_ROUTES:
        r = ops.get(url)
        assert r.status_code == 403, url
        assert "event" not in r.headers.get("content-disposition", ""), url
    for url in POST_ROUTES:
        r = ops.post(url, data={"csrf_token": token, "study": ORIGINAL, "reason": "curious"})
        assert r.status_code == 403, url
    assert uses(rt, before) == []  # a refused request leaves no use of the trail
    stranger = TestClient(app, follow_redirects=False)
    for url in GET_ROUTES:
        r = stranger.get(url)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin"), url


def test_search_pages_are_keyset_paged_and_recorded(app, rt):
    c = client(app, rt, "olivia", "compliance")
    before = head(rt)
    r = c.get("/audit", params={"event": "association.*", "limit": "25"})
    assert r.status_code == 200
    seqs = [int(s) for s in re.findall(r'href="/audit/events/(\d+)" aria-label', r.text)]
    assert len(seqs) == 10 and seqs == sorted(seqs, reverse=True)
    assert "No older events" in r.text
    [use] = uses(rt, before)
    assert (use["event_id"], use["event_type"], use["actor"], use["host"]) == \
        ("110101", "audit.query", "console:olivia", "10.1.2.3")
    assert use["details"] == {"filters": {"events": ["association.*"]}, "returned": 10, "limit": 25,
                              "offset": 0, "view": "search"}
    # the older page: a cursor in the link, recorded as an upper bound
    r = c.get("/audit", params={"limit": "25"})
    older = re.search(r'href="(/audit\?[^"]*before=(\d+))" rel="next"', r.text)
    r2 = c.get(older[1].replace("&amp;", "&"))
    seqs2 = [int(s) for s in re.findall(r'href="/audit/events/(\d+)" aria-label', r2.text)]
    assert seqs2 and max(seqs2) < int(older[2]) and uses(rt)[-1]["details"]["filters"]["upto_seq"] == int(older[2]) - 1
    # bad input: one line, 400, nothing recorded
    before = head(rt)
    for params in ({"event": "nosuch"}, {"since": "tomorrowish"}, {"study": ORIGINAL},
                   {"study": ORIGINAL, "reason": "in a link"}, {"limit": "7"}):
        r = c.get("/audit", params=params)
        assert r.status_code == 400 and 'class="error"' in r.text, params
    assert uses(rt, before) == []


def test_original_uid_only_by_post_with_reason_recorded_like_the_cli(app, rt):
    c = client(app, rt, "olivia", "compliance")
    token = csrf_of(c.get("/audit/downloads").text)
    before = head(rt)
    r = c.post("/audit/original", data={"csrf_token": token, "study": ORIGINAL, "reason": "ticket 4711"})
    assert r.status_code == 200
    pseudo = pseudonymize_uid(rt.keys.uid_key, ORIGINAL)
    assert ORIGINAL not in r.text and pseudo in r.text
    seqs = re.findall(r'href="/audit/events/(\d+)" aria-label', r.text)
    assert len(seqs) == 8
    pz, query = uses(rt, before)
    assert (pz["event_type"], pz["study_uid"], pz["details"]) == \
        ("reid.pseudonymize", pseudo, {"reason": "ticket 4711", "via": "audit.query"})
    assert query["study_uid"] == pseudo and query["details"]["filters"] == \
        {"study_uid": pseudo, "study_given_as": "original", "reason": "ticket 4711"}
    assert pz["actor"] == query["actor"] == "console:olivia" and query["seq"] == pz["seq"] + 1
    # paging and export links carry the pseudonym, never the original nor the reason
    assert "ticket" not in "".join(re.findall(r'href="([^"]+)"', r.text))
    # without a reason: refused, nothing recorded
    before = head(rt)
    r = c.post("/audit/original", data={"csrf_token": token, "study": ORIGINAL, "reason": " "})
    assert r.status_code == 400 and ORIGINAL not in r.text and uses(rt, before) == []
    with rt.read_sessions() as s:
        stored = " ".join(str(v) for row in s.execute(text("SELECT * FROM audit_events")) for v in row)
    assert ORIGINAL not in stored


def first_seq(rt: Runtime, event_type: str) -> int:
    with rt.read_sessions() as s:
        return s.execute(text("SELECT min(seq) FROM audit_events WHERE event_type = :t"), {"t": event_type}).scalar()


def test_event_detail_shows_everything_and_is_recorded(app, rt):
    c = client(app, rt, "olivia", "compliance")
    before = head(rt)
    seq = first_seq(rt, "association.rejected")
    r = c.get(f"/audit/events/{seq}")
    assert r.status_code == 200
    assert "association.rejected" in r.text and "calling AE title not allowed" in r.text and "prev_hash" not in r.text
    with rt.read_sessions() as s:
        h = s.execute(text("SELECT hash FROM audit_events WHERE seq = :s"), {"s": seq}).scalar()
    assert h in r.text and ("&#34;reason&#34;" in r.text or '"reason"' in r.text)
    [use] = uses(rt, before)
    assert use["details"] == {"filters": {"after_seq": seq - 1, "upto_seq": seq}, "returned": 1, "limit": 1,
                              "offset": 0, "view": "event"}
    assert c.get("/audit/events/999999").status_code == 404
    assert c.get("/audit/events/99999999999999999999999").status_code == 404


def test_downloads_stream_valid_dicom_json_csv_and_are_recorded_first(app, rt):
    c = client(app, rt, "olivia", "compliance")
    schema = etree.XMLSchema(etree.parse(str(audit_export.SCHEMA)))
    rows_before = head(rt)
    r = c.get("/audit/export", params={"format": "dicom"})
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    lines = list(audit_export.read_dicom_lines(r.text))
    assert len(lines) == rows_before == int(r.headers["x-cxrd-events"])  # its own event is not in it
    for line in lines:
        schema.assertValid(etree.fromstring(line.encode()))
    export = uses(rt)[-1]
    assert (export["event_type"], export["event_id"], export["actor"]) == ("audit.export", "110101", "console:olivia")
    assert export["details"] == {"filters": {"upto_seq": rows_before}, "format": "dicom",
                                 "exported": rows_before, "output": "download"}
    r = c.get("/audit/export", params={"format": "csv", "event": "association.rejected"})
    csv_lines = r.text.splitlines()
    assert csv_lines[0].startswith("seq,occurred_at") and len(csv_lines) == 11
    r = c.get("/audit/export", params={"format": "json", "outcome": "failure"})
    assert [json.loads(x)["outcome"] for x in r.text.splitlines()] == [4] * 10
    assert c.get("/audit/export", params={"format": "pdf"}).status_code == 400


def test_download_streams_in_batches(app, rt, monkeypatch):
    """A download is written batch by batch, never built whole in memory."""
    from daemon.console.pages import audit as pages
    monkeypatch.setattr(pages, "EXPORT_BATCH", 7)
    chunks = list(pages._stream(rt, pages.AuditFilter(), "dicom", "CXRD@test"))
    assert len(chunks) == 6 and all(c.count(b"\n") <= 7 for c in chunks)


def test_chain_verification_runs_in_background_and_shows_first_bad_row(app, rt):
    c = client(app, rt, "olivia", "compliance")
    r = c.get("/audit/chain")
    assert "has not been verified yet" in r.text
    token = csrf_of(r.text)
    assert c.post("/audit/chain/verify", data={}).status_code == 403  # no CSRF token
    r = c.post("/audit/chain/verify", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/audit/chain"
    app.state.audit_verify_job.wait()
    r = c.get("/audit/chain")
    assert "Chain intact" in r.text and "console:olivia" in r.text
    verify = [u for u in uses(rt) if u["event_type"] == "audit.verify"][-1]
    assert verify["outcome"] == 0 and verify["details"]["ok"] and verify["actor"] == "console:olivia"
    with rt.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'aet:FORGED' WHERE seq = 9"))
    c.post("/audit/chain/verify", data={"csrf_token": token})
    app.state.audit_verify_job.wait()
    r = c.get("/audit/chain")
    assert "Chain BROKEN" in r.text and 'href="/audit/events/9" id="first-bad-row"' in r.text


def test_chain_page_refreshes_while_running(app, rt):
    from daemon.console.audit_verify_job import JobState, VerifyJob
    c = client(app, rt, "olivia", "compliance")
    job = VerifyJob(state=JobState(running=True, started_at="2026-11-29T10:00:00+00:00", actor="console:x",
                                   checked=500, total=1000))
    app.state.audit_verify_job = job
    before = head(rt)
    r = c.get("/audit/chain")
    assert '<meta http-equiv="refresh" content="2">' in r.text and 'value="50"' in r.text
    assert uses(rt, before) == []  # progress alone reads no rows of the trail


def test_who_looked_lists_only_uses_of_the_trail(app, rt):
    c = client(app, rt, "olivia", "compliance")
    c.get("/audit", params={"actor": "aet:EVIL"})
    c.get("/audit/events/3")
    r = c.get("/audit/access", params={"event": "instance.stored"})  # an event filter is ignored here
    seqs = [int(s) for s in re.findall(r'href="/audit/events/(\d+)" aria-label', r.text)]
    assert len(seqs) == 2 and all(s > 40 for s in seqs) and "instance.stored" not in r.text


def test_events_per_day_chart_with_table_is_recorded(app, rt):
    c = client(app, rt, "olivia", "compliance")
    before = head(rt)
    r = c.get("/audit/activity", params={"days": "7"})
    assert r.status_code == 200 and "<svg" in r.text and 'role="img"' in r.text and "style=" not in r.text
    rows = re.findall(r"<tr><td>(\d{4}-\d\d-\d\d)</td><td>(\d+)</td><td>(\d+)</td>", r.text)
    with rt.read_sessions() as s:  # every row was written today
        n, failed = s.execute(text("SELECT count(*), sum(outcome != 0) FROM audit_events WHERE seq <= :h"),
                              {"h": before}).one()
    assert len(rows) == 7 and rows[-1][1:] == (str(n), str(failed)) and failed == 10
    assert all(r[1:] == ("0", "0") for r in rows[:-1])
    [use] = uses(rt, before)
    assert use["details"]["view"] == "per-day counts" and use["details"]["returned"] == 7
    assert c.get("/audit/activity", params={"days": "9999"}).status_code == 400


def test_the_pages_on_postgresql(fresh_pg_database, tmp_path, monkeypatch):
    """Keyset pages, an event, a download and a verification (server-side cursor in a thread) on
    PostgreSQL, the database a hospital runs several gateways on."""
    from daemon.cli import main as cli
    monkeypatch.setenv("CXRD_STORAGE__STATE_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CXRD_STORAGE__DATABASE_URL", fresh_pg_database)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init"]) == 0
    rt = Runtime(load_settings(None))
    with rt.sessions.begin() as s:
        for i in range(90):
            audit.append(s, rt.keys.audit_key, event_type="association.rejected" if i % 3 == 0 else "instance.stored",
                         outcome=4 if i % 3 == 0 else 0, actor="aet:EVIL" if i % 3 == 0 else "aet:MODALITY",
                         study_uid=OTHER_STUDY)
    app = build_app(rt)
    c = client(app, rt, "olivia", "compliance")
    r = c.get("/audit", params={"event": "association.*", "limit": "25", "since": "today"})
    first = [int(s) for s in re.findall(r'href="/audit/events/(\d+)" aria-label', r.text)]
    older = re.search(r'href="(/audit\?[^"]*before=\d+)" rel="next"', r.text)[1].replace("&amp;", "&")
    second = [int(s) for s in re.findall(r'href="/audit/events/(\d+)" aria-label', c.get(older).text)]
    with rt.read_sessions() as s:
        expected = [r[0] for r in s.execute(text(
            "SELECT seq FROM audit_events WHERE event_type LIKE 'association.%' ORDER BY seq DESC"))]
    assert first + second == expected and len(first) == 25
    assert c.get(f"/audit/events/{first[0]}").status_code == 200
    schema = etree.XMLSchema(etree.parse(str(audit_export.SCHEMA)))
    lines = list(audit_export.read_dicom_lines(c.get("/audit/export", params={"format": "dicom"}).text))
    assert len(lines) > 90 and all(schema.validate(etree.fromstring(x.encode())) for x in lines)
    token = csrf_of(c.get("/audit/chain").text)
    c.post("/audit/chain/verify", data={"csrf_token": token})
    assert app.state.audit_verify_job.wait().result["ok"]
    with rt.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'aet:FORGED' WHERE seq = :s"), {"s": first[3]})
    c.post("/audit/chain/verify", data={"csrf_token": token})
    assert app.state.audit_verify_job.wait().result["first_bad_seq"] == first[3]
    assert f'href="/audit/events/{first[3]}" id="first-bad-row"' in c.get("/audit/chain").text
