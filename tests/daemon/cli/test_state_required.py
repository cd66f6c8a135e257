"""Every command that uses the state finds it or says where it looked, and creates nothing.

Run from a directory where no `cxrd init` was made, a command once failed half-way with
`internal error (OperationalError)` and left an empty `./var/cxrd.db`, or answered `no models yet`
with exit 0. Only `init`, `serve` and `restore` create state; `check-config` reads none. The table
below names every other command; a new command fails `test_the_table_names_every_command` until it
is added, so it cannot escape the check.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from daemon.cli import main as cli

# One valid invocation of each command that needs an initialised state.
NEEDS_STATE: dict[tuple[str, ...], list[str]] = {
    ("status",): [],
    ("predict",): ["chest.dcm"],
    ("model", "list"): [],
    ("model", "promote"): ["v1"],
    ("model", "rollback"): [],
    ("model", "import"): ["weights.pt", "--format", "torchvision"],
    ("audit", "verify"): [],
    ("audit", "query"): ["--since", "today"],
    ("audit", "export"): ["--format", "json"],
    ("reidentify",): ["--reason", "ticket 1", "--study", "2.25.1"],
    ("keys", "list"): [],
    ("keys", "rotate"): [],
    ("keys", "rewrap"): [],
    ("keys", "retire"): ["kek-1"],
    ("retrain",): ["--list"],
    ("purge",): ["--dry-run"],
    ("backup",): ["backup-dir"],
    ("labels", "import"): ["labels.csv"],
    ("labels", "export"): ["batch-dir"],
    ("train",): ["--data", "nih"],
    ("evaluate",): ["--data", "nih"],
    ("predictions",): [],
    ("results", "list"): [],
    ("results", "retry"): [],
    ("console",): [],
    ("users", "add"): ["alice", "--role", "admin"],
    ("users", "list"): [],
    ("users", "disable"): ["alice"],
    ("users", "enable"): ["alice"],
    ("users", "reset-password"): ["alice"],
    ("users", "set-role"): ["alice", "compliance"],
}
CASES = [[*command, *rest] for command, rest in NEEDS_STATE.items()]
# Subcommands that read only the file they are given (they set `needs_state=False`).
READS_ONLY_ITS_ARGUMENT: set[tuple[str, ...]] = {("labels", "from-report")}


def _leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {prefix}
    found: set[tuple[str, ...]] = set()
    for name, sub in subs[0].choices.items():
        found |= _leaves(getattr(sub, "_full", lambda: None)() or sub, (*prefix, name))
    return found


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """An empty current directory and settings from the embedded defaults only."""
    for name in list(os.environ):
        if name.startswith("CXRD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_the_table_names_every_command():
    every = _leaves(cli.build_parser())
    assert every == set(NEEDS_STATE) | {(c,) for c in cli.STATELESS_COMMANDS} | READS_ONLY_ITS_ARGUMENT


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(c) for c in NEEDS_STATE])
def test_without_state_a_command_says_where_it_looked_and_creates_nothing(elsewhere, capsys, argv):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"cxrd: error: no initialised cxrd state: {elsewhere / 'var'} does not exist")
    assert "the embedded default, relative to the current directory" in err
    assert "cxrd init" in err and "--config" in err and "CXRD_STORAGE__STATE_DIR" in err
    assert _tree(elsewhere) == []


def test_labelling_a_report_file_needs_no_state_and_creates_nothing(elsewhere, tmp_path, capsys):
    report = tmp_path / "report.txt"
    report.write_text("FINDINGS: No pneumothorax.\n")
    assert cli.main(["labels", "from-report", str(report)]) == 0
    assert "Pneumothorax" in capsys.readouterr().out
    assert _tree(elsewhere) == []


@pytest.mark.parametrize("argv", [["status"], ["audit", "query"], ["predictions"], ["model", "list"]],
                         ids=" ".join)
def test_a_directory_without_database_or_keys_is_not_state_either(elsewhere, capsys, argv):
    """An empty `var/` (or one holding the empty cxrd.db an older release left) is refused as such."""
    (elsewhere / "var").mkdir()
    (elsewhere / "var" / "cxrd.db").touch()
    before = _tree(elsewhere)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"{elsewhere / 'var'} has no database {elsewhere / 'var' / 'cxrd.db'}" in err
    assert _tree(elsewhere) == before


def test_a_state_named_by_a_config_file_is_found_from_anywhere(elsewhere, tmp_path, capsys, monkeypatch):
    """The relative state_dir in a config file means the same directory wherever the command runs."""
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "cxrd.toml"
    config.write_text('[storage]\nstate_dir = "state"\n')
    assert cli.main(["init", "--config", str(config)]) == 0
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    capsys.readouterr()
    assert cli.main(["status", "--config", str(config)]) == 0
    assert f"state directory : {etc / 'state'}" in capsys.readouterr().out
    assert _tree(other) == [] and _tree(elsewhere) == []
    # Its error names the file the setting came from.
    config.write_text('[storage]\nstate_dir = "missing"\n')
    assert cli.main(["model", "list", "--config", str(config)]) == 1
    assert f"(storage.state_dir: set in {config}, relative to that file's directory)" in capsys.readouterr().err


def test_check_config_says_which_state_directory_and_why(elsewhere, capsys):
    assert cli.main(["check-config"]) == 0
    err = capsys.readouterr().err
    assert f"state directory {elsewhere / 'var'} (storage.state_dir: the embedded default" in err
    assert _tree(elsewhere) == []


@pytest.mark.parametrize("argv", [["serve"], ["check-config"], ["init"]], ids=" ".join)
def test_a_lookalike_variable_stops_serve_and_check_config_before_anything_happens(elsewhere, capsys,
                                                                                 monkeypatch, argv):
    monkeypatch.setenv("CXRD_DICOM_PORT", "104")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == ("cxrd: error: environment variable CXRD_DICOM_PORT names no setting; "
                   "did you mean CXRD_DICOM__PORT ('dicom.port')?\n")
    assert _tree(elsewhere) == []
