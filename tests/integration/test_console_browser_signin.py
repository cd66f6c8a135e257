"""The console in a real browser: headless Chromium signs in through the form with the keyboard."""
from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By

pytestmark = pytest.mark.slow


def test_console_admin_signs_in_and_sees_the_accounts_page(console_factory, browser, signed_in):
    console = console_factory(start=False).init()
    console.add_user("alice", "admin", "correct horse battery")
    console.start()
    browser.get(console.url + "/signin")
    browser.screenshot("console-signin")
    signed_in(browser, console.url, "alice", "correct horse battery")
    assert browser.current_url.endswith("/accounts")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Console accounts"
    browser.screenshot("console-accounts")
    rows = console.audit_rows("console.signin")
    assert [(r["event_id"], r["actor"], r["host"]) for r in rows] == [("110114", "console:alice", "127.0.0.1")]
