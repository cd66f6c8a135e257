"""A hospital IT person's first day, as the README tells it, run as separate `cxrd` processes.

Everything runs from a working directory that is neither the repository nor the state directory, as a
person in their home directory would: a command without state must say where it looked and create
nothing; `cxrd init` with the embedded defaults makes `./var` where it is run; every later command finds
that state through `CXRD_STORAGE__STATE_DIR` (what the README says to export). Then: serve on loopback
ports, push a real radiograph with dcmtk's storescu, status, import and promote a model, predictions,
the compliance commands, backup while serving, restore with a wrong key and then the right one, and a
purge dry run. Each step's exit status and output are checked, and at the end no file has appeared in
the working directory or beside the state.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CXRD, copy_with_new_uids, free_port, storescu

SOURCE = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


class Person:
    """Runs `cxrd ...` from one working directory with one environment, like a shell session."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.cwd, self.env = cwd, env

    def __call__(self, *args: str, expect: int = 0, **env: str) -> subprocess.CompletedProcess:
        r = subprocess.run([CXRD, *args], cwd=self.cwd, env={**self.env, **env}, capture_output=True,
                           text=True, timeout=180)
        assert r.returncode == expect, f"cxrd {' '.join(args)} -> {r.returncode}: {r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr, r.stderr
        if expect:
            assert r.stderr.startswith("cxrd: error: ") and r.stderr.count("\n") == 1, r.stderr
        return r


def _wait(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def _instance_states(db_file: Path) -> dict[str, int]:
    c = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        return dict(c.execute("SELECT state, count(*) FROM instances GROUP BY state").fetchall())
    finally:
        c.close()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """An ImageNet-layout DenseNet121 state dict (random, seeded): what `model import` is given."""
    import torch
    import torchvision
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "densenet121.pth"
    torch.save(torchvision.models.densenet121(weights=None).state_dict(), path)
    return path


def test_first_day_from_the_readme(tmp_path, shared_data, weights):
    home, site, elsewhere = tmp_path / "home", tmp_path / "site", tmp_path / "elsewhere"
    for d in (home, site, elsewhere):
        d.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("CXRD_") and k != "CREDENTIALS_DIRECTORY"}
    dicom_port, http_port = free_port(), free_port()
    base.update({"TCP_NODELAY": "1", "CXRD_DICOM__PORT": str(dicom_port), "CXRD_DICOM__BIND": "127.0.0.1",
                 "CXRD_HTTP__PORT": str(http_port), "CXRD_RETRAIN__ENABLED": "false",
                 "CXRD_MODEL__THREADS": "1", "CXRD_MODEL__BACKEND": "fp32", "CXRD_STORAGE__MIN_FREE_MB": "1"})

    # Before anything exists: one line naming the absolute directory looked in, and nothing created.
    r = Person(home, base)("status", expect=1)
    assert f"no initialised cxrd state: {home / 'var'} does not exist" in r.stderr
    assert "CXRD_STORAGE__STATE_DIR" in r.stderr and "cxrd init" in r.stderr
    assert _tree(home) == []
    # A variable that looks like a setting but is not one is refused, not ignored.
    r = Person(home, base)("check-config", expect=2, CXRD_DICOM_PORT="104")
    assert "CXRD_DICOM_PORT names no setting; did you mean CXRD_DICOM__PORT" in r.stderr

    # `cxrd init` on embedded defaults: ./var where it is run.
    r = Person(site, base)("init")
    state = site / "var"
    assert f"state directory {state} ready" in r.stdout
    r = Person(site, base)("check-config")
    assert f'state_dir = "{state}"' in r.stdout and f"state directory {state}" in r.stderr

    # From now on, from anywhere, with the state named as the README says.
    cxrd = Person(elsewhere, {**base, "CXRD_STORAGE__STATE_DIR": str(state)})
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        serve = subprocess.Popen([CXRD, "serve"], cwd=elsewhere, env=cxrd.env, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        _wait(lambda: "cxrd: DICOM " in log_path.read_text(errors="replace") or serve.poll() is not None,
              60, "cxrd serve to bind its ports")
        assert serve.poll() is None, log_path.read_text()[-2000:]

        files = copy_with_new_uids(shared_data / SOURCE, tmp_path / "push", 1)
        import pydicom
        original_study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        assert storescu(dicom_port, *files)[1] == ["Success"]

        r = cxrd("status")
        assert f"state directory : {state}" in r.stdout and "current model   : none yet" in r.stdout

        # weights without evaluation data are imported but not made current, and the one line says how
        r = cxrd("model", "import", str(weights), "--format", "torchvision", "--version", "first-day",
                 "--promote", expect=1)
        assert "--promote-without-evaluation" in r.stderr
        r = cxrd("status")
        assert "current model   : none yet" in r.stdout
        r = cxrd("model", "promote", "first-day", "--force")
        assert "first-day" in r.stdout
        _wait(lambda: _instance_states(state / "cxrd.db").get("predicted") == 1, 90, "the image to be predicted")

        r = cxrd("predictions", "--format", "json")
        assert "2.25." in r.stdout and original_study not in r.stdout
        assert json.loads(r.stdout)

        r = cxrd("audit", "query", "--since", "today")
        assert "instance.stored" in r.stdout and "model.promoted" in r.stdout
        r = cxrd("audit", "export", "--format", "json", "--since", "today")
        events = [json.loads(line) for line in r.stdout.splitlines()]
        assert any(e["event_type"] == "instance.stored" for e in events)
        assert original_study not in r.stdout
        cxrd("audit", "verify")

        r = cxrd("backup", str(tmp_path / "backup"))  # while the daemon serves
        assert f"backup in {tmp_path / 'backup'}: 1 instances" in r.stdout
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            rc = serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
            rc = serve.wait()
    assert rc == 0, log_path.read_text()[-2000:]

    # The disk is lost; a new state directory, the master key put back by hand - first the wrong one.
    from storage.keys import create_key_file
    restored = tmp_path / "restored"
    put_back = restored / "keys" / "master.key"
    put_back.parent.mkdir(parents=True)
    create_key_file(put_back)
    again = Person(elsewhere, {**base, "CXRD_STORAGE__STATE_DIR": str(restored)})
    r = again("restore", str(tmp_path / "backup"), expect=1)
    assert "keyring" in r.stderr
    assert _tree(restored) == ["keys", "keys/master.key"]  # nothing copied; the retry is not "not empty"
    put_back.unlink()
    shutil.copy2(state / "keys" / "master.key", put_back)
    r = again("restore", str(tmp_path / "backup"))
    assert f"restored 1 instances into {restored}" in r.stdout
    again("audit", "verify")
    r = again("purge", "--dry-run")
    assert r.stdout.strip()

    # Nothing appeared where the commands ran, beside the state, or beside the restored state.
    assert _tree(elsewhere) == [] and _tree(home) == []
    assert [p.name for p in site.iterdir()] == ["var"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["home", "site", "elsewhere", "push", "serve.log", "backup", "restored"])
