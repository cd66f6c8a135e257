"""The Model watch page in a real browser (headless Chromium) against a running `cxrd console`: an
operations user reads the drift alarm, a finding's PSI and its score distribution against the
reference (server-drawn SVG) as the monitoring job stored them, picks another finding with the
keyboard; a compliance user gets 403 from the server. Writes the screenshot docs/img/ is made from."""
from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from conftest import next_page
from console_watch_data import monitoring_pass, watched

pytestmark = pytest.mark.slow
PASSWORD = "correct horse battery"


def test_model_watch_page_in_a_browser(cli_state, console_factory, browser, signed_in):
    from datetime import datetime, timezone

    from sqlalchemy import select

    from config import load_settings
    from daemon.runtime import Runtime
    from storage.models import MonitorState
    rt = Runtime(load_settings(None))
    now = datetime.now(timezone.utc)
    watched(rt, now)
    monitoring_pass(rt, now)
    with rt.read_sessions() as s:
        psi = s.scalar(select(MonitorState.value).where(MonitorState.key == "cxrd_drift_psi{label=Effusion,model=v1}"))
    console = console_factory(state_dir=cli_state, start=False)
    console.add_user("olga", "operations", PASSWORD)
    console.add_user("carl", "compliance", PASSWORD)
    console.start()

    signed_in(browser, console.url, "olga", PASSWORD)
    browser.get(console.url + "/watch")
    assert browser.find_element(By.ID, "watch-drift-alarm").text == "on"
    assert browser.find_element(By.CSS_SELECTOR, 'td[data-psi="Effusion"]').text == f"{psi:.3f}"
    assert browser.find_element(By.CSS_SELECTOR, 'td[data-band="Effusion"]').text == "drift range"
    chart = browser.find_element(By.ID, "chart-distribution")
    assert chart.size["width"] > 200 and len(chart.find_elements(By.TAG_NAME, "polyline")) == 2
    assert "too few positives" in browser.find_element(By.CSS_SELECTOR, 'td[data-too-few="Mass"]').text
    assert "2.25." not in browser.page_source  # no study or image identifier, not even a pseudonym
    browser.set_window_size(1280, 2100)
    browser.screenshot("console-model-watch")
    browser.set_window_size(1280, 900)

    # another finding, chosen with the keyboard (a GET form: no script)
    select_box = browser.find_element(By.ID, "finding")
    select_box.send_keys("Mass")
    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, "form.period button").send_keys(Keys.ENTER)
    next_page(browser, page)
    assert "finding=Mass" in browser.current_url
    assert "Mass: score at each percentile" in browser.find_element(By.ID, "chart-distribution").text \
        or "Mass: score at each percentile" in browser.page_source
    browser.delete_all_cookies()

    signed_in(browser, console.url, "carl", PASSWORD)
    browser.get(console.url + "/watch")
    assert "Not allowed for your role" in browser.page_source
