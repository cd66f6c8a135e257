"""The console's systemd unit beside the daemon's, and the nginx example's settings."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from config import load_settings

REPO = Path(__file__).resolve().parents[2]


def _unit_here(tmp_path: Path) -> Path:
    unit = tmp_path / "cxrd-console.service"
    unit.write_text((REPO / "deploy" / "cxrd-console.service").read_text()
                    .replace("/opt/cxrd/venv/bin/cxrd", str(Path(sys.executable).with_name("cxrd"))))
    return unit


def test_console_unit_verifies_is_hardened_and_shares_the_daemons_user_and_keys(tmp_path):
    exe = shutil.which("systemd-analyze") or pytest.fail("systemd-analyze not found (Debian package systemd)")
    unit = _unit_here(tmp_path)
    r = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0 and "cxrd-console.service" not in r.stderr, r.stderr
    r = subprocess.run([exe, "security", "--offline=yes", str(unit)], capture_output=True, text=True)
    exposure = re.search(r"Overall exposure level for cxrd-console.service: ([0-9.]+)", r.stdout + r.stderr)
    assert exposure and float(exposure.group(1)) <= 2.0
    text = unit.read_text()
    daemon = (REPO / "deploy" / "cxrd.service").read_text()
    for line in ("User=cxrd", "Group=cxrd", "StateDirectory=cxrd", "Environment=CXRD_STORAGE__STATE_DIR=/var/lib/cxrd",
                 "LoadCredential=cxrd.key:/etc/cxrd/master.key", "LoadCredential=cxrd.dbpass:/etc/cxrd/db-password",
                 "UMask=0077", "ProtectSystem=strict", "NoNewPrivileges=yes", "LimitCORE=0"):
        assert line in text and line in daemon, line
    assert "LoadCredential=cxrd.ldappass:/etc/cxrd/ldap-password" in text
    assert " console --config /etc/cxrd/cxrd.toml" in text


def test_console_nginx_example_settings_are_accepted(monkeypatch, tmp_path):
    """The [console] block the nginx example tells IT to write is valid, and the proxy it trusts is
    the address nginx connects from."""
    conf = (REPO / "deploy" / "nginx-cxrd-console.conf").read_text()
    block = "\n".join(line[4:] for line in conf.splitlines() if line.startswith("#   "))
    cfg = tmp_path / "cxrd.toml"
    cfg.write_text(re.sub(r"\s+#.*", "", block) + "\n")
    c = load_settings(cfg).console
    assert (c.bind, c.port, c.tls, c.trusted_proxies) == ("127.0.0.1", 8081, False, ["127.0.0.1"])
    assert f"proxy_pass http://127.0.0.1:{c.port};" in conf
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf  # set, never appended to
