"""The compliance pages in a real browser (headless Chromium) against a real `cxrd console` over
HTTPS: a compliance officer searches one study's events, opens one, downloads last month as DICOM
audit messages (valid against the shipped schema), verifies the chain and sees it broken after a row
is edited in SQL, with the first bad row; an operations person gets 403 from the server for every
audit page and download. Every step leaves the expected audit rows. Screenshots go to the test
artifacts (docs/img/ holds copies of three of them)."""
from __future__ import annotations

import http.cookiejar
import json
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from storage import audit_export

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
STUDIES = ["2.25.111111111111111111111111111111111111", "2.25.222222222222222222222222222222222222",
           "2.25.333333333333333333333333333333333333"]
AUDIT_URLS = ["/audit", "/audit?study=" + STUDIES[0], "/audit/events/1", "/audit/chain", "/audit/access",
              "/audit/activity", "/audit/downloads", "/audit/export?format=dicom", "/audit/export?format=csv",
              "/audit/export?format=json&month=2026-10"]


def last_month() -> str:
    return (datetime.now().astimezone().date().replace(day=1) - timedelta(days=1)).strftime("%Y-%m")


def populate(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every day from the first of last month to today: images stored, predictions, results sent
    (now and then one failed), associations refused, written through the real chain with the
    state's key, at the times they happened."""
    from config import load_settings
    from daemon.runtime import Runtime
    from storage import audit
    monkeypatch.setenv("CXRD_STORAGE__STATE_DIR", str(state_dir))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    rt = Runtime(load_settings(None))
    today = datetime.now().astimezone().date()
    day = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    k = 0
    with rt.sessions.begin() as s:
        while day <= today:
            o = day.toordinal()
            for i in range(2 + o * 7 % 5):
                when = datetime.combine(day, datetime.min.time()).replace(hour=7 + (i * 3) % 11, minute=i * 7).astimezone()
                monkeypatch.setattr(audit, "_now", lambda w=when: w.astimezone(timezone.utc).isoformat(
                    timespec="microseconds"))
                study = STUDIES[k % 3]
                k += 1
                audit.append(s, rt.keys.audit_key, event_type="instance.stored", actor="aet:CR_ROOM2",
                             host="10.20.0.12", study_uid=study, object_uid=study + f".{k}", details={"bytes": 8123456})
                audit.append(s, rt.keys.audit_key, event_type="prediction.created", actor="cxrd:worker",
                             study_uid=study, details={"model": "densenet121-v3", "labels": 14})
                failed = o % 6 == 0 and i == 0
                audit.append(s, rt.keys.audit_key, event_type="result.failed" if failed else "result.sent",
                             outcome=8 if failed else 0, actor="cxrd:results", host="10.20.0.5", study_uid=study,
                             details={"destination": "PACS", **({"error": "association refused"} if failed else {})})
            if o % 4 == 0:
                audit.append(s, rt.keys.audit_key, event_type="association.rejected", outcome=4,
                             actor="aet:UNKNOWN", host="10.66.0.9", details={"reason": "calling AE title not allowed"})
            day += timedelta(days=1)
    monkeypatch.undo()


def rows(state_dir: Path, where: str = "1=1", args: tuple = ()) -> list[dict]:
    con = sqlite3.connect(state_dir / "cxrd.db")
    try:
        cur = con.execute(f"SELECT seq, event_id, event_type, outcome, actor, host, study_uid, details "
                          f"FROM audit_events WHERE {where} ORDER BY seq", args)
        return [dict(zip([c[0] for c in cur.description], r)) | {"details": json.loads(r[7])} for r in cur]
    finally:
        con.close()


def wait_for(browser, predicate, timeout: float = 30):  # noqa: ANN001, ANN201
    return WebDriverWait(browser, timeout, poll_frequency=0.2).until(predicate)


def status_with_cookies(browser, url: str) -> int:  # noqa: ANN001
    """The HTTP status the server gives this URL for the browser's own session cookies."""
    jar = http.cookiejar.CookieJar()
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx),
                                         urllib.request.HTTPCookieProcessor(jar))
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())
    req = urllib.request.Request(url, headers={"Cookie": cookie})
    try:
        with opener.open(req, timeout=15) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_compliance_officer_in_the_browser(console_factory, browser, signed_in, monkeypatch, tmp_path):
    console = console_factory(start=False).init()
    console.add_user("olivia", "compliance", PASSWORD)
    console.add_user("oscar", "operations", PASSWORD)
    populate(console.state_dir, monkeypatch)
    console.start()
    browser.set_window_size(1280, 1100)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})

    # sign in: a compliance officer lands on the audit search, newest events first
    signed_in(browser, console.url, "olivia", PASSWORD)
    assert browser.current_url.endswith("/audit")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Audit trail"
    browser.screenshot("console-audit-search")

    # search one study's events with the keyboard
    start = max(r["seq"] for r in rows(console.state_dir))
    field = browser.find_element(By.ID, "f-study")
    field.send_keys(STUDIES[1])
    field.send_keys(Keys.ENTER)
    wait_for(browser, lambda d: "study=" in d.current_url)
    links = browser.find_elements(By.CSS_SELECTOR, "table.audit-events tbody td:first-child a")
    expected = [r["seq"] for r in rows(console.state_dir, "study_uid = ? AND seq <= ?", (STUDIES[1], start))]
    assert [int(a.text) for a in links] == sorted(expected, reverse=True)[:50]  # the newest page
    assert browser.find_element(By.CSS_SELECTOR, "a[rel=next]").text == "Older events"
    browser.screenshot("console-audit-study")

    # open one event
    seq = int(links[0].text)
    links[0].send_keys(Keys.ENTER)
    wait_for(browser, lambda d: d.current_url.endswith(f"/audit/events/{seq}"))
    assert STUDIES[1] in browser.find_element(By.CSS_SELECTOR, "dl.audit-detail").text
    assert any(f'"{k}"' in browser.find_element(By.CSS_SELECTOR, "pre.audit-json").text
               for k in ("model", "destination", "bytes"))
    browser.screenshot("console-audit-event")

    # download last month as DICOM audit messages, validate every message against the schema
    browser.get(console.url + "/audit/downloads")
    month = browser.find_element(By.ID, "d-month").get_attribute("value")
    assert month == last_month()
    browser.find_element(By.ID, "fmt-dicom").send_keys(Keys.SPACE)
    browser.find_element(By.CSS_SELECTOR, "form[action='/audit/export'] button[type=submit]").send_keys(Keys.ENTER)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = [p for p in downloads.iterdir() if not p.name.endswith(".crdownload")]
        if done:
            break
        time.sleep(0.2)
    [file] = done
    assert file.name == f"cxrd-audit-{month}.dicom-audit.txt"
    schema = etree.XMLSchema(etree.parse(str(audit_export.SCHEMA)))
    messages = list(audit_export.read_dicom_lines(file.read_text()))
    for m in messages:
        schema.assertValid(etree.fromstring(m.encode()))
    from storage.audit_query import month_bounds
    in_month = rows(console.state_dir, "occurred_at >= ? AND occurred_at < ?", month_bounds(month))
    assert len(in_month) > 60 and [f"cxrd-audit:{r['seq']}" in m for r, m in zip(in_month, messages)] == \
        [True] * len(in_month) == [True] * len(messages)
    export = rows(console.state_dir, "event_type = 'audit.export'")[-1]
    assert (export["actor"], export["host"], export["details"]["exported"], export["details"]["format"]) == \
        ("console:olivia", "127.0.0.1", len(in_month), "dicom")

    # the events-per-day chart, with its table
    browser.get(console.url + "/audit/activity?days=30")
    assert browser.find_element(By.CSS_SELECTOR, "svg.audit-chart").get_attribute("role") == "img"
    browser.screenshot("console-audit-activity")

    # verify the chain now: intact; then a row edited in SQL: broken, first bad row linked
    browser.get(console.url + "/audit/chain")
    browser.find_element(By.CSS_SELECTOR, "form[action='/audit/chain/verify'] button").send_keys(Keys.ENTER)
    wait_for(browser, lambda d: "Chain intact" in d.page_source)
    con = sqlite3.connect(console.state_dir / "cxrd.db")
    with con:
        con.execute("UPDATE audit_events SET host = '10.0.0.99' WHERE seq = ?", (seq,))
    con.close()
    browser.find_element(By.CSS_SELECTOR, "form[action='/audit/chain/verify'] button").send_keys(Keys.ENTER)
    wait_for(browser, lambda d: "Chain BROKEN" in d.page_source)
    browser.screenshot("console-audit-chain-broken")
    browser.find_element(By.ID, "first-bad-row").send_keys(Keys.ENTER)
    wait_for(browser, lambda d: d.current_url.endswith(f"/audit/events/{seq}"))

    # who looked at the audit trail: olivia's uses, recorded with her address
    browser.get(console.url + "/audit/access")
    assert "console:olivia" in browser.find_element(By.CSS_SELECTOR, "table.audit-events").text

    uses = rows(console.state_dir, "seq > ? AND event_id = '110101'", (start,))
    assert {u["actor"] for u in uses} == {"console:olivia"} and {u["host"] for u in uses} == {"127.0.0.1"}
    views = [u["details"].get("view") for u in uses if u["event_type"] == "audit.query"]
    assert views.count("event") == 2 and "per-day counts" in views and "chain" in views and "who-looked" in views
    assert any(u["details"]["filters"].get("study_uid") == STUDIES[1] for u in uses if u["event_type"] == "audit.query")
    verifies = [u for u in uses if u["event_type"] == "audit.verify"]
    assert [(v["outcome"], v["details"]["ok"], v["details"]["first_bad_seq"]) for v in verifies] == \
        [(0, True, None), (12, False, seq)]

    # operations: 403 from the server for every audit page and download, and nothing recorded
    browser.find_element(By.CSS_SELECTOR, "form.signout button").send_keys(Keys.ENTER)
    wait_for(browser, lambda d: "/signin" in d.current_url)
    signed_in(browser, console.url, "oscar", PASSWORD)
    before = max(r["seq"] for r in rows(console.state_dir))
    for url in AUDIT_URLS:
        assert status_with_cookies(browser, console.url + url) == 403, url
    browser.get(console.url + "/audit/export?format=dicom")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not allowed for your role"
    assert [r for r in rows(console.state_dir, "seq > ? AND event_id = '110101'", (before,))] == []
    assert not [p for p in downloads.iterdir() if p != file]
