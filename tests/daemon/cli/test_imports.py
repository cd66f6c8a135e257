"""Commands load only what they use: a command that does not touch the model never imports torch.

A compliance officer or a monitoring script runs `cxrd status` or `cxrd audit verify` often; torch,
torchvision and onnxruntime alone cost seconds and hundreds of megabytes. Each command runs in a fresh
interpreter (an import is only seen once per process) through the real entry point, which then reports
what it imported.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CXRD, REPO

MODEL = {"torch", "torchvision", "onnxruntime"}
DICOM = {"pydicom", "pynetdicom"}
DATABASE = {"sqlalchemy", "alembic"}
CRYPTO = {"cryptography"}

# argv -> packages it must not import. Beyond the model: listing commands needs nothing but argparse;
# printing the settings needs no keys; reading the audit trail or the database needs no DICOM library
# and no migration tool.
CASES: list[tuple[list[str], set[str]]] = [
    (["--help"], MODEL | DICOM | DATABASE | CRYPTO),
    (["check-config"], MODEL | DICOM | CRYPTO | {"alembic"}),
    (["status"], MODEL | DICOM),
    (["audit", "verify"], MODEL | DICOM | {"alembic"}),
    (["audit", "query", "--since", "yesterday"], MODEL | DICOM | {"alembic"}),
    (["audit", "export", "--format", "json", "--month", "2026-10"], MODEL | DICOM | {"alembic"}),
    (["predictions", "--since", "yesterday"], MODEL | DICOM | {"alembic"}),
    (["results", "list"], MODEL | DICOM | {"alembic"}),
    (["results", "retry"], MODEL | {"alembic"}),
    (["labels", "import", "{tmp}/labels.csv"], MODEL | {"alembic"}),
    (["keys", "list"], MODEL | DICOM | {"alembic"}),
    (["purge", "--dry-run"], MODEL | DICOM | {"alembic"}),
    (["reidentify", "--reason", "ticket 1", "--study", "2.25.1"], MODEL | DICOM | {"alembic"}),
    (["retrain", "--list"], MODEL),
    (["backup", "{tmp}/backup"], MODEL | DICOM),
    (["init"], MODEL | DICOM),
]

# Runs `cxrd ARGS` in-process and writes its exit status and the imported modules to a file
# (stdout belongs to the command).
PROBE = """
import json, sys
from daemon.cli.main import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    """A state directory made by `cxrd init`, shared by every case (none of them changes it much)."""
    cwd = tmp_path_factory.mktemp("imports")
    subprocess.run([CXRD, "init"], cwd=cwd, env=_env(), check=True, capture_output=True, timeout=120)
    return cwd


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "SUDO_USER")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env


def imported_by(argv: list[str], cwd: Path) -> tuple[int, set[str], str]:
    """(exit status, top-level packages imported, stderr) of `cxrd *argv` run in a fresh interpreter."""
    report = cwd / "imports.json"
    report.unlink(missing_ok=True)
    r = subprocess.run([sys.executable, "-c", PROBE, str(report), *argv], cwd=cwd, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert report.exists(), r.stderr
    data = json.loads(report.read_text())
    return data["code"], {name.split(".")[0] for name in data["modules"]}, r.stderr


@pytest.mark.parametrize("argv,forbidden", CASES, ids=[" ".join(a[:2]) for a, _ in CASES])
def test_command_imports_only_what_it_uses(state_dir, tmp_path, argv, forbidden):
    argv = [a.format(tmp=tmp_path) for a in argv]
    (tmp_path / "labels.csv").write_text("Image Index,Finding Labels\n")
    code, packages, err = imported_by(argv, state_dir)
    expected = 1 if argv[0] == "reidentify" else 0  # no entry for that study: refused after the lookup
    assert code == expected, err
    assert not packages & forbidden, f"cxrd {' '.join(argv)} imported {sorted(packages & forbidden)}"


def test_the_probe_sees_a_model_command_import_torch(state_dir):
    """The check above can fail: a command that uses the model is seen importing torch."""
    code, packages, err = imported_by(["model", "list"], state_dir)
    assert code == 0, err
    assert "torch" in packages
