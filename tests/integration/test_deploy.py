"""The systemd unit and the example configuration a hospital's IT installs."""
from __future__ import annotations

import os
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


def _reachable_by_service_user(cmd: list[str], tmp_path: Path) -> list[str]:
    """The test venv's interpreter may live under /root (0700, e.g. pyenv), which no service user can
    reach. Then run the installer in a private mount namespace where /root is a world-traversable
    tmpfs with only .pyenv bound into it; nothing outside the namespace changes."""
    real = Path(sys.executable).resolve()
    if not str(real).startswith("/root/") or shutil.which("unshare") is None:
        return cmd
    hold = tmp_path / "pyenv-bind"
    hold.mkdir()
    script = (f"mount --bind /root/.pyenv {hold} && mount -t tmpfs -o mode=0755 tmpfs /root && "
              f"mkdir /root/.pyenv && mount --bind {hold} /root/.pyenv && exec \"$@\"")
    return ["unshare", "-m", "sh", "-c", script, "sh", *cmd]


def _mode(path: Path) -> tuple[str, str, int]:
    import grp
    import pwd
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o7777


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root (it refuses otherwise)")
def test_install_into_a_staging_root_keeps_secrets_private_and_never_inits_as_root(tmp_path):
    """install.sh --root: the real script, staged. The configuration is 0640 root:<service group>, key
    and database password 0600 root, and everything `cxrd init` made in the state directory belongs to
    the service user (it ran as that user, not as root). Running it again upgrades, keeps the
    configuration and the key, and closes a world-readable configuration left by an older install."""
    import tempfile
    # pytest's own temporary directories are 0700 root: the service user could not reach the staging
    # root there, as it reaches / on a real host
    root = Path(tempfile.mkdtemp(prefix="cxrd-install-test-", dir="/tmp"))
    root.chmod(0o755)
    try:
        _install_and_check(root, tmp_path)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _install_and_check(root: Path, tmp_path: Path) -> None:
    import grp
    import pwd
    user = pwd.getpwnam("nobody")
    group = grp.getgrgid(user.pw_gid).gr_name
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = ["sh", str(REPO / "deploy" / "install.sh"), "--root", str(root), "--user", "nobody",
           "--venv", str(Path(sys.executable).parent.parent), "--no-start"]
    cmd = _reachable_by_service_user(cmd, tmp_path)
    before = set(Path("/run").glob("cxrd-install.*"))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    etc, state = root / "etc" / "cxrd", root / "var" / "lib" / "cxrd"
    assert _mode(etc) == ("root", group, 0o750)
    assert _mode(etc / "cxrd.toml") == ("root", group, 0o640)
    assert _mode(etc / "master.key") == ("nobody", group, 0o400)
    assert _mode(etc / "db-password") == ("nobody", group, 0o400)
    assert _mode(state) == ("nobody", group, 0o700)
    made = [p for p in state.rglob("*")]
    assert {"cxrd.db", "keyring.json", "vault"} <= {p.name for p in made}
    assert [str(p) for p in made if p.stat().st_uid != user.pw_uid] == []  # init ran as the service user
    assert set(Path("/run").glob("cxrd-install.*")) == before  # the handed-over key copy is gone
    unit = (root / "etc" / "systemd" / "system" / "cxrd.service").read_text()
    assert "User=nobody" in unit and "LoadCredential=cxrd.dbpass:/etc/cxrd/db-password" in unit
    assert str(root) not in unit
    # an older install left the configuration world-readable; a site edit and the key must survive
    key = (etc / "master.key").read_bytes()
    (etc / "cxrd.toml").write_text((etc / "cxrd.toml").read_text() + "\n# site edit\n")
    (etc / "cxrd.toml").chmod(0o644)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "readable by every user" in r.stderr
    assert _mode(etc / "cxrd.toml") == ("root", group, 0o640)
    assert "# site edit" in (etc / "cxrd.toml").read_text() and (etc / "master.key").read_bytes() == key


def test_install_script_never_runs_init_as_root_and_config_is_not_world_readable():
    script = (REPO / "deploy" / "install.sh").read_text()
    calls = [line for line in script.splitlines() if re.search(r"cxrd\"? .*\binit\b", line)
             and not line.lstrip().startswith("#")]
    assert calls and all("runuser -u \"$SVC_USER\"" in line or line.lstrip().startswith('"$VENV/bin/cxrd"')
                          for line in calls), calls
    joined = re.sub(r"\\\n\s*", " ", script)
    assert re.search(r'runuser -u "\$SVC_USER" -- env [^\n]*"\$VENV/bin/cxrd" --config "\$ETC/cxrd.toml" init',
                     joined)
    assert "0644" not in script and "chown -R" not in script
    assert 'install -m 0640 -o root -g "$SVC_GROUP"' in script
