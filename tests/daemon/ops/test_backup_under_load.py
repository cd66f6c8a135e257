"""Backup under load and restore that fails cleanly, through the real commands in this process.

A backup is taken while the daemon keeps appending audit rows, so the head it records must be the
head of the snapshot it holds; a restore that fails (wrong key, cut audit rows) must leave nothing
behind, so the retry is not refused as "not empty".
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from config import load_settings
from daemon.cli import main as cli
from daemon.ops import backup as backup_ops
from daemon.runtime import Runtime


def _use(monkeypatch, state: Path) -> Runtime:
    monkeypatch.setenv("CXRD_STORAGE__STATE_DIR", str(state))
    return Runtime(load_settings(None))


def _head(db_file: Path) -> tuple[int, str]:
    c = sqlite3.connect(db_file)
    try:
        return c.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        c.close()


def _beside(path: Path) -> list[str]:
    """What lies next to `path` apart from it: a failed operation must leave no work directory."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    for name in list(os.environ):
        if name.startswith("CXRD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def initialised(env, monkeypatch, capsys) -> Runtime:
    rt = _use(monkeypatch, env / "state")
    assert cli.main(["init"]) == 0
    for i in range(5):
        rt.audit("app.start", n=i)
    capsys.readouterr()
    return rt


def test_a_backup_taken_while_rows_are_appended_restores_and_verifies(initialised, env, monkeypatch, capsys):
    rt = initialised
    stop = threading.Event()

    def keep_appending() -> None:  # the daemon auditing images while IT runs the nightly backup
        writer = Runtime(rt.settings)
        while not stop.is_set():
            writer.audit("app.start", load=True)

    snapshot = backup_ops._snapshot_sqlite

    def snapshot_then_more_rows(live: Path, out_file: Path) -> None:
        snapshot(live, out_file)
        for i in range(3):  # committed after the snapshot, before anything else reads the database
            rt.audit("app.start", after_snapshot=i)

    monkeypatch.setattr(backup_ops, "_snapshot_sqlite", snapshot_then_more_rows)
    thread = threading.Thread(target=keep_appending)
    thread.start()
    try:
        assert cli.main(["backup", str(env / "b"), "--include-master-key", "--format", "json"]) == 0
    finally:
        stop.set()
        thread.join()
    manifest = json.loads(capsys.readouterr().out)
    snapshot_head = _head(env / "b" / "cxrd.db")
    assert manifest["audit_head"] == list(snapshot_head)
    assert _head(rt.sqlite_file)[0] > snapshot_head[0]  # the live chain went on without it

    _use(monkeypatch, env / "restored")
    assert cli.main(["restore", str(env / "b")]) == 0, capsys.readouterr().err
    assert cli.main(["audit", "verify"]) == 0


def test_a_wrong_key_leaves_nothing_and_the_right_one_then_restores(initialised, env, monkeypatch, capsys):
    assert cli.main(["backup", str(env / "b")]) == 0  # master key kept elsewhere, as the README says
    other = _use(monkeypatch, env / "other")
    assert cli.main(["init"]) == 0  # a different installation: a different master key
    target = env / "new"
    put_back = target / "keys" / "master.key"
    put_back.parent.mkdir(parents=True)
    shutil.copy2(other.key_file, put_back)
    _use(monkeypatch, target)
    capsys.readouterr()
    assert cli.main(["restore", str(env / "b")]) == 1
    err = capsys.readouterr().err
    assert "keyring" in err and "\n" not in err.strip()
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["keys", "keys/master.key"]
    assert _beside(target) == []

    os.chmod(put_back, 0o644)  # the right key, but readable by others: refused before anything is copied
    shutil.copyfile(initialised.key_file, put_back)
    assert cli.main(["restore", str(env / "b")]) == 1
    assert "accessible by group or others" in capsys.readouterr().err
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["keys", "keys/master.key"]

    os.chmod(put_back, 0o600)
    assert cli.main(["restore", str(env / "b")]) == 0, capsys.readouterr().err
    assert f"into {target}" in capsys.readouterr().out
    assert put_back.read_bytes() == initialised.key_file.read_bytes() and _beside(target) == []
    assert (target / "cxrd.db").exists() and (target / "keys" / "keyring.json").exists()
    assert cli.main(["audit", "verify"]) == 0


def test_a_restore_that_fails_verification_leaves_no_directory(initialised, env, monkeypatch, capsys):
    assert cli.main(["backup", str(env / "b"), "--include-master-key"]) == 0
    c = sqlite3.connect(env / "b" / "cxrd.db")
    with c:
        c.execute("DELETE FROM audit_events WHERE seq = (SELECT max(seq) FROM audit_events)")
    c.close()
    target = env / "deep" / "new"
    _use(monkeypatch, target)
    capsys.readouterr()
    assert cli.main(["restore", str(env / "b")]) == 1
    assert "audit chain does not verify" in capsys.readouterr().err
    assert not (env / "deep").exists()  # not the state, not its work directory, not the parent made for it


def test_a_backup_never_leaves_a_half_made_directory(initialised, env, monkeypatch, capsys):
    def broken(live: Path, out_file: Path) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(backup_ops, "_snapshot_sqlite", broken)
    assert cli.main(["backup", str(env / "b")]) == 1
    assert not (env / "b").exists() and _beside(env / "b") == []


def test_a_key_kept_outside_the_state_is_used_there_or_installed_there(initialised, env, monkeypatch, capsys):
    """`security.key_file` elsewhere (e.g. /etc/cxrd/master.key): restore reads it in place, or puts the
    backup's copy there, and never into the state directory."""
    assert cli.main(["backup", str(env / "with-key"), "--include-master-key"]) == 0
    outside = env / "etc" / "master.key"
    monkeypatch.setenv("CXRD_SECURITY__KEY_FILE", str(outside))
    _use(monkeypatch, env / "r1")
    assert cli.main(["restore", str(env / "with-key")]) == 0, capsys.readouterr().err
    assert outside.read_bytes() == initialised.key_file.read_bytes()
    assert oct(outside.stat().st_mode & 0o777) == "0o600"
    assert not (env / "r1" / "keys" / "master.key").exists()
    assert cli.main(["audit", "verify"]) == 0
    _use(monkeypatch, env / "r2")  # the key is there now: used in place
    assert cli.main(["restore", str(env / "with-key")]) == 0
    assert not (env / "r2" / "keys" / "master.key").exists()
