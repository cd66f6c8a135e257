"""The systemd unit and the example configuration a hospital's IT installs."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from config import load_settings

REPO = Path(__file__).resolve().parents[2]


def _unit_for_here(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at this checkout's venv (verify checks it exists)."""
    text = (REPO / "deploy" / "cxrd.service").read_text()
    unit = tmp_path / "cxrd.service"
    unit.write_text(text.replace("/opt/cxrd/venv/bin/cxrd", str(Path(sys.executable).with_name("cxrd"))))
    return unit


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze not found (Debian package systemd)")
    return exe


def test_unit_passes_systemd_analyze_verify(tmp_path):
    r = subprocess.run([_systemd_analyze(), "verify", str(_unit_for_here(tmp_path))], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "cxrd.service" not in r.stderr, r.stderr  # no warnings about our unit


def test_unit_is_hardened_and_notify_type(tmp_path):
    text = (REPO / "deploy" / "cxrd.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "User=cxrd", "StateDirectory=cxrd", "UMask=0077",
                 "ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes", "ProtectHome=yes",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallFilter=@system-service",
                 "LoadCredential=cxrd.key:", "LimitCORE=0", "MemoryMax=", "MemoryHigh=", "TasksMax="):
        assert line in text, line
    # A reload that sends SIGTERM stops the service for good (exit 0 is not a failure to restart).
    assert "ExecReload=/bin/kill -TERM" not in text
    r = subprocess.run([_systemd_analyze(), "security", "--offline=yes", str(_unit_for_here(tmp_path))],
                       capture_output=True, text=True)
    exposure = re.search(r"Overall exposure level for cxrd.service: ([0-9.]+)", r.stdout + r.stderr)
    assert exposure, r.stdout[-500:]
    assert float(exposure.group(1)) <= 2.0  # README reports the figure


def test_example_config_is_valid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(REPO / "deploy" / "cxrd.example.toml", env={"CREDENTIALS_DIRECTORY": "/run/credentials/cxrd.service",
                                                                  "CXRD_STORAGE__STATE_DIR": "/var/lib/cxrd"})
    assert s.security.key_file == "/run/credentials/cxrd.service/cxrd.key"
    assert s.storage.database_url == "sqlite:////var/lib/cxrd/cxrd.db"


def test_install_script_is_valid_shell():
    assert subprocess.run(["sh", "-n", str(REPO / "deploy" / "install.sh")]).returncode == 0
