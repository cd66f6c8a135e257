"""The `cxrd` command: exit codes, one-line errors, --help everywhere, init idempotent."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import CXRD
from daemon.cli.main import build_parser


def run(*args: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([CXRD, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _subcommands(parser) -> list[list[str]]:
    """Every command path, e.g. ['model', 'list'], found by walking argparse's sub-parsers."""
    import argparse
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                paths.append([name])
                paths += [[name, *rest] for rest in _subcommands(child)]
    return paths


def test_every_command_has_help(tmp_path, capsys):
    commands = _subcommands(build_parser())
    assert ["init"] in commands and ["serve"] in commands and ["status"] in commands
    for path in commands:  # in-process: one interpreter start per command would cost a minute
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([*path, "--help"])
        assert exit_.value.code == 0, path
        assert f"usage: cxrd {' '.join(path)}" in " ".join(capsys.readouterr().out.split())
    r = run("--help", cwd=tmp_path)  # and the installed console script itself
    assert r.returncode == 0 and "usage: cxrd" in r.stdout


def test_check_config_with_broken_file_prints_one_line_and_exits_2(tmp_path):
    (tmp_path / "bad.toml").write_text("[dicom]\nport = 0\n")
    r = run("check-config", "--config", "bad.toml", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "'dicom.port' must be between 1 and 65535" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_config_prints_effective_settings_as_json(tmp_path):
    r = run("check-config", "--format", "json", cwd=tmp_path, env={"CXRD_DICOM__PORT": "2104"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dicom"]["port"] == 2104


def test_init_is_idempotent_and_status_reports_an_empty_queue(tmp_path):
    for _ in range(2):
        r = run("init", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    state = tmp_path / "var"
    assert (state / "cxrd.db").exists()
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    r = run("status", "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["queue_depth"] == 0 and info["instances"]["received"] == 0


def test_status_before_init_says_what_to_do(tmp_path):
    r = run("status", cwd=tmp_path)
    assert r.returncode == 1
    assert f"no initialised cxrd state: {tmp_path / 'var'} does not exist" in r.stderr
    assert "run `cxrd init`" in r.stderr and not (tmp_path / "var").exists()


def test_unreachable_database_is_one_line_not_a_traceback(tmp_path):
    assert run("init", cwd=tmp_path).returncode == 0  # the state directory and keys exist
    r = run("status", cwd=tmp_path, env={"CXRD_STORAGE__DATABASE_URL": "postgresql+psycopg://u:pw@127.0.0.1:1/x"})
    assert r.returncode == 1
    assert r.stderr.startswith("cxrd: error: database postgresql+psycopg://u:***@127.0.0.1:1/x")
    assert "Traceback" not in r.stderr and ":pw@" not in r.stderr


def test_unknown_command_is_a_usage_error(tmp_path):
    r = run("frobnicate", cwd=tmp_path)
    assert r.returncode == 2
