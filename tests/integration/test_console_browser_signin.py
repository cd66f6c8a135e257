"""The console in a real browser: headless Chromium (Debian's) against a running `cxrd console` over
HTTPS, signing in through the form with the keyboard, as each role."""
from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.slow
PASSWORD = "correct horse battery"
PEOPLE = (("carol", "compliance", "/audit", "Compliance"), ("otto", "operations", "/operations", "Operations"),
          ("ada", "admin", "/accounts", "Administrator"))
MENUS = {"compliance": ["/audit"], "operations": ["/operations", "/models", "/watch"],
         "admin": ["/accounts", "/models", "/watch"]}


@pytest.fixture()
def console(console_factory):
    c = console_factory(start=False, env={"CXRD_CONSOLE__LOCKOUT_THRESHOLD": "3"}).init()
    for name, role, _, _ in PEOPLE:
        c.add_user(name, role, PASSWORD)
    return c.start()


def test_console_each_role_signs_in_sees_only_its_pages_and_signs_out(console, browser, signed_in):
    browser.get(console.url + "/signin")
    browser.screenshot("console-signin")
    for name, role, home, title in PEOPLE:
        signed_in(browser, console.url, name, PASSWORD)
        assert browser.current_url == console.url + home
        assert f"Signed in as {name} ({title})" in browser.find_element(By.CSS_SELECTOR, ".who").text
        links = [a.get_attribute("pathname") for a in browser.find_elements(By.CSS_SELECTOR, "nav a")]
        assert links == MENUS[role]
        if role == "admin":
            assert browser.find_element(By.TAG_NAME, "h1").text == "Console accounts"
            browser.screenshot("console-accounts")
            browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)  # the first Tab: the skip link
            skip = browser.switch_to.active_element
            assert skip.get_attribute("class") == "skip-link" and skip.is_displayed()
            skip.send_keys(Keys.ENTER)
            assert browser.switch_to.active_element.get_attribute("id") == "main"
        else:
            assert "/accounts" not in links
            browser.get(console.url + "/accounts")  # typed by hand: refused by the server
            assert browser.find_element(By.TAG_NAME, "h1").text == "Not allowed for your role"
        browser.find_element(By.CSS_SELECTOR, ".signout button").send_keys(Keys.ENTER)
        WebDriverWait(browser, 15).until(lambda d: "/signin" in d.current_url)
        assert "You have signed out." in browser.find_element(By.CSS_SELECTOR, ".notice").text
        browser.get(console.url + "/accounts")  # signed out: every page sends to the sign-in page
        assert "/signin?next=%2Faccounts" in browser.current_url
    rows = console.audit_rows("console.signin", "console.signout")
    assert [(r["event_type"], r["actor"], r["host"]) for r in rows] == [
        (t, f"console:{name}", "127.0.0.1") for name, *_ in PEOPLE for t in ("console.signin", "console.signout")]
    assert {r["event_id"] for r in rows} == {"110114"}


def test_console_wrong_password_locks_the_account_in_the_browser(console, browser, signed_in):
    for _ in range(3):
        signed_in(browser, console.url, "ada", "not the password", expect_success=False)
        assert "not right" in browser.find_element(By.CSS_SELECTOR, ".error").text
    signed_in(browser, console.url, "ada", PASSWORD, expect_success=False)
    assert "Too many failed sign-ins" in browser.find_element(By.CSS_SELECTOR, ".error").text
    assert "/signin" in browser.current_url
    browser.screenshot("console-signin-locked")
    failed = console.audit_rows("console.signin_failed", "console.locked")
    assert [(r["event_type"], r["details"].get("reason")) for r in failed] == [
        ("console.signin_failed", "wrong password"), ("console.signin_failed", "wrong password"),
        ("console.locked", "too many failed sign-ins for this name"), ("console.signin_failed", "wrong password"),
        ("console.signin_failed", "locked out")]
    assert all(r["actor"] == "console:ada" and r["host"] == "127.0.0.1" for r in failed)
    assert console.audit_rows("console.signin") == []
