"""The operations and model pages in a real browser (headless Chromium) against a running console on
the state a real daemon filled: images pushed with storescu (stored, refused at receipt, a refused
association), results parked as failed, and models in the registry. Operations sees the database's
numbers and retries a result; compliance gets 403 from the server on every operations URL; an admin
promotes a model only with the typed version name, and the promotion is audited."""
from __future__ import annotations

import sqlite3
import ssl
import urllib.error
import urllib.request
from datetime import datetime, timezone

import numpy as np
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from conftest import copy_with_new_uids, next_page, storescu

pytestmark = pytest.mark.slow

CHEST = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"
# planted in every pushed image: no page may show them (nor the original UIDs)
MARKERS = {"PatientName": "ZZOPSMARKER^PATIENT", "PatientID": "ZZOPSMARKERID", "AccessionNumber": "ZZOPSACC1",
           "InstitutionName": "ZZOPSMARKER HOSPITAL"}
PASSWORD = "correct horse battery"
OPS_URLS = ("/operations", "/operations?hours=168", "/models", "/models/good")
OPS_POSTS = ("/operations/results/retry", "/models/promote", "/models/rollback")


def _metrics(separation: float, seed: int) -> dict:
    from cxrmodel import evaluate as E
    from cxrmodel.labels import LABELS
    from cxrmodel.promotion import Floor, with_evidence
    rng = np.random.default_rng(seed)
    Y = (rng.random((200, len(LABELS))) < 0.3).astype(np.float32)
    P = np.clip(0.5 + (Y - 0.5) * separation + rng.normal(0, 0.2, Y.shape), 0, 1)
    return with_evidence(E.manifest_metrics(E.report(Y, P, n_boot=50), "test split"), Y, P, Floor(), n_boot=50)


def _populate(d, shared_data, tmp_path) -> list[str]:  # noqa: ANN001
    """Through the real daemon: two stored images, one refused at receipt, one refused association;
    returns the identifiers the pages must never show (planted values, original UIDs)."""
    import pydicom
    chest, other, damaged = copy_with_new_uids(shared_data / CHEST, tmp_path / "c", 3, markers=MARKERS)
    originals = [str(getattr(pydicom.dcmread(f), a)) for f in (chest, other, damaged)
                 for a in ("StudyInstanceUID", "SOPInstanceUID")]
    assert storescu(d.dicom_port, chest, other, aet="PACS1")[1] == ["Success", "Success"]
    ds = pydicom.dcmread(damaged)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) * 6 // 10 // 2 * 2]
    ds.save_as(tmp_path / "truncated.dcm")
    refused = storescu(d.dicom_port, tmp_path / "truncated.dcm", aet="PACS1")[1]
    assert refused and refused != ["Success"]
    storescu(d.dicom_port, chest, aet="ROGUE")  # not an allowed calling AE title: association refused
    assert d.stop() == 0  # the refusal audit flushes at stop
    return ["ZZOPS", *originals]


def _park_results_and_add_models(state_dir) -> str:  # noqa: ANN001
    """Two result objects parked as failed for a stored study, and three model versions."""
    import torch

    from cxrmodel.network import ArchSpec, build
    from cxrmodel.registry import Registry
    con = sqlite3.connect(state_dir / "cxrd.db")
    study = con.execute("SELECT study_uid FROM instances LIMIT 1").fetchone()[0]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    with con:
        for kind in ("sr", "heatmap"):
            con.execute("INSERT INTO results (study_uid, model_version, kind, state, attempts, next_attempt_at, "
                        "claimed_by, last_error, created_at) VALUES (?, 'base', ?, 'failed', 8, ?, '', "
                        "'C-STORE to PACS refused: 0xA700', ?)", (study, kind, now, now))
    con.close()
    torch.manual_seed(0)
    net = build(ArchSpec(), seed=0)
    reg = Registry(state_dir / "models")
    reg.add(net, version="base", metrics=_metrics(0.25, 1), promote=True)
    reg.add(net, version="good", metrics=_metrics(0.35, 2))
    return study


def _db(state_dir, sql: str, *args):  # noqa: ANN001, ANN202
    con = sqlite3.connect(state_dir / "cxrd.db")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _status(url: str, cookie: str, method: str = "GET") -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    req = urllib.request.Request(url, method=method, headers={"Cookie": cookie},
                                 data=b"csrf_token=x&confirm=good&version=good" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=15) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _session_cookie(browser) -> str:  # noqa: ANN001
    return "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())


def _sign_out(browser) -> None:  # noqa: ANN001
    _submit(browser, browser.find_element(By.CSS_SELECTOR, "form.signout button"), Keys.ENTER)


def _submit(browser, element, *keys: str) -> None:  # noqa: ANN001
    """Type into (or press) a form element and wait until the next page has replaced this one."""
    from selenium.common.exceptions import WebDriverException
    page = browser.find_element(By.TAG_NAME, "html")
    *text, last = keys
    if text:
        element.send_keys(*text)
    try:
        element.send_keys(last)  # Enter: the form is submitted with the keyboard
    except WebDriverException:  # chromedriver may report the node gone once the next page loads
        pass
    next_page(browser, page)


def test_operations_dashboard_retry_models_and_roles(daemon_factory, console_factory, browser, signed_in,
                                                     shared_data, tmp_path):
    d = daemon_factory({"CXRD_DICOM__ALLOWED_CALLING_AETS": '["PACS1"]', "CXRD_MODEL__WORKERS": "0"}).start()
    identifiers = _populate(d, shared_data, tmp_path)
    study = _park_results_and_add_models(d.state_dir)
    console = console_factory(state_dir=d.state_dir, start=False).init()
    for name, role in (("olga", "operations"), ("carl", "compliance"), ("ada", "admin")):
        console.add_user(name, role, PASSWORD)
    console.start()

    # operations: the dashboard shows what the database holds
    signed_in(browser, console.url, "olga", PASSWORD)
    assert browser.current_url.endswith("/operations")
    states = dict(_db(d.state_dir, "SELECT state, count(*) FROM instances GROUP BY state"))
    assert states.get("received") == 2
    for state in ("received", "predicted", "failed"):
        cell = browser.find_element(By.CSS_SELECTOR, f'td[data-state="{state}"]').text
        assert int(cell) == states.get(state, 0), state
    assert int(browser.find_element(By.ID, "glance-stored").text) == sum(states.values())
    assert int(browser.find_element(By.CSS_SELECTOR, 'td[data-not-stored="refused"]').text) == 1
    assert int(browser.find_element(By.CSS_SELECTOR, 'td[data-accepted="PACS1"]').text) == 2
    assert int(browser.find_element(By.CSS_SELECTOR, 'td[data-refused="ROGUE"]').text) >= 1
    failures = browser.find_element(By.ID, "failures-table").text
    assert "ingest (not stored)" in failures and "PACS1" in failures
    assert "0xA700" in browser.find_element(By.ID, "results-table").text
    svgs = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(svgs) >= 3 and all(s.size["width"] > 200 for s in svgs)
    page = browser.page_source
    assert "ROGUE" in page and not [x for x in identifiers if x in page]  # pseudonyms and AE titles only
    browser.set_window_size(1280, 2000)
    browser.screenshot("console-operations-dashboard")
    browser.set_window_size(1280, 900)

    # Retry a parked result with the keyboard, as `cxrd results retry --study` would
    _submit(browser, browser.find_element(By.CSS_SELECTOR, "#results-table button"), Keys.ENTER)
    notice = browser.find_element(By.CSS_SELECTOR, "#results .notice").text
    assert notice.startswith("2 result(s) set back to pending")
    assert _db(d.state_dir, "SELECT DISTINCT state FROM results WHERE study_uid = ?", study) == [("pending",)]
    rows = console.audit_rows("results.retry")
    assert [(r["actor"], r["host"], r["details"]["requeued"]) for r in rows] == [("console:olga", "127.0.0.1", 2)]

    # the model page: evaluation report with CIs and ROC curves
    browser.get(console.url + "/models")
    assert browser.find_element(By.ID, "current-version").text == "base"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#report-table tbody tr")) == 14
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart-roc polyline")) == 14
    assert not browser.find_elements(By.ID, "promote-form") and not browser.find_elements(By.ID, "rollback-form")
    assert not [x for x in identifiers if x in browser.page_source]
    browser.set_window_size(1280, 1900)
    browser.screenshot("console-models")
    browser.set_window_size(1280, 900)
    _sign_out(browser)

    # compliance: 403 from the server on every operations page and action, links or not
    signed_in(browser, console.url, "carl", PASSWORD)
    cookie = _session_cookie(browser)
    for path in OPS_URLS:
        assert _status(console.url + path, cookie) == 403, path
    for path in OPS_POSTS:
        assert _status(console.url + path, cookie, "POST") == 403, path
    browser.get(console.url + "/operations")
    assert "Not allowed for your role" in browser.page_source
    assert "/operations" not in [a.get_attribute("pathname") for a in browser.find_elements(By.CSS_SELECTOR, "nav a")]
    _sign_out(browser)

    # admin: a wrong typed confirmation changes nothing; the right one promotes, audited
    signed_in(browser, console.url, "ada", PASSWORD)
    browser.get(console.url + "/models/good")
    _submit(browser, browser.find_element(By.ID, "promote-confirm"), "goo", Keys.ENTER)
    assert "confirmation must be the version name" in browser.find_element(By.ID, "model-error").text
    assert console.audit_rows("model.promoted") == []
    _submit(browser, browser.find_element(By.ID, "promote-confirm"), "good", Keys.ENTER)
    assert browser.find_element(By.ID, "current-version").text == "good"
    assert "good is now the current model (was base)" in browser.find_element(By.ID, "model-done").text
    [row] = console.audit_rows("model.promoted")
    assert (row["actor"], row["host"], row["details"]["version"], row["details"]["forced"]) == (
        "console:ada", "127.0.0.1", "good", False)
    assert "console:ada" in browser.find_element(By.ID, "history-table").text
