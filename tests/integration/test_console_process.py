"""`cxrd console` as a process: HTTPS by default with the pair `cxrd init` made, plain HTTP refused
off loopback, X-Forwarded-For believed only from a configured proxy."""
from __future__ import annotations

import re
import ssl
import urllib.parse
import urllib.request

import pytest

pytestmark = pytest.mark.slow
PASSWORD = "correct horse battery"


def _sign_in(url: str, name: str, password: str, headers: dict[str, str] | None = None) -> int:
    """Sign in through the form with urllib, carrying the pre-sign-in cookie by hand (a Secure one
    too, as a browser behind a TLS-terminating proxy would); returns the status of the POST."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())
    page = opener.open(urllib.request.Request(url + "/signin", headers=headers or {}))
    cookie = page.headers["set-cookie"].split(";")[0]
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.read().decode()).group(1)
    body = urllib.parse.urlencode({"name": name, "password": password, "csrf_token": token}).encode()
    try:
        return opener.open(urllib.request.Request(url + "/signin", data=body,
                                                  headers={**(headers or {}), "Cookie": cookie})).status
    except urllib.error.HTTPError as exc:
        return exc.code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return None


def test_console_serves_https_with_the_init_pair_and_audits_its_start(console_factory):
    console = console_factory()
    assert (console.state_dir / "console" / "tls.crt").exists()
    assert oct((console.state_dir / "console" / "tls.key").stat().st_mode & 0o777) == "0o600"
    pem = ssl.get_server_certificate(("127.0.0.1", console.port))
    assert pem.strip() == (console.state_dir / "console" / "tls.crt").read_text().strip()
    cert = (console.state_dir / "console" / "tls.crt").read_bytes()
    assert console.cli("init").returncode == 0
    assert (console.state_dir / "console" / "tls.crt").read_bytes() == cert  # init never replaces it
    starts = console.audit_rows("app.start")
    assert starts[-1]["details"]["component"] == "console" and starts[-1]["details"]["tls"] is True


def test_console_refuses_plain_http_off_loopback(console_factory):
    console = console_factory(start=False, tls=False, env={"CXRD_CONSOLE__BIND": "0.0.0.0"})
    console.init()
    r = console.cli("console", timeout=60)
    assert r.returncode == 1
    assert "plain HTTP would carry passwords in clear" in r.stderr and "Traceback" not in r.stderr


def test_console_refuses_to_start_without_its_certificate(console_factory):
    console = console_factory(start=False, env={"CXRD_CONSOLE__TLS_CERT": "/nonexistent/console.crt"})
    console.init()
    r = console.cli("console", timeout=60)
    assert r.returncode == 1 and "console TLS file(s) not found: /nonexistent/console.crt" in r.stderr


def test_console_believes_x_forwarded_for_only_from_a_trusted_proxy(console_factory):
    untrusted = console_factory(start=False, tls=False)
    untrusted.init()
    untrusted.add_user("alice", "admin", PASSWORD)
    untrusted.start()
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    assert _sign_in(untrusted.url, "alice", PASSWORD, forged) == 303
    assert [r["host"] for r in untrusted.audit_rows("console.signin")] == ["127.0.0.1"]
    untrusted.stop()

    proxied = console_factory(state_dir=untrusted.state_dir, tls=False,
                              env={"CXRD_CONSOLE__TRUSTED_PROXIES": '["127.0.0.1"]'}, start=False)
    proxied.start()
    assert _sign_in(proxied.url, "alice", PASSWORD,
                    {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}) == 303
    assert [r["host"] for r in proxied.audit_rows("console.signin")] == ["127.0.0.1", "198.51.100.7"]
