"""Usage errors exit 2 with one line, in every command (README "Commands"), and change nothing.

A usage error is something the person typed: an unknown option or choice, a value of the wrong type
or out of range, an unreadable time, options that contradict each other, an original Study UID
without a reason. Errors about the world (a missing file, a broken chain) exit 1 and are not here.
"""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from config import load_settings
from daemon.cli import main as cli
from daemon.runtime import Runtime
from storage.models import AuditEvent

ORIGINAL = "1.2.826.0.1.3680043.8.498.1234567"
PSEUDO = "2.25.314159265358979323846264338327950288"

CASES: list[tuple[list[str], str]] = [
    # argparse itself: unknown option, bad choice, wrong type, missing argument
    (["status", "--bogus"], "unrecognized arguments"),
    (["predictions", "--format", "xml"], "invalid choice"),
    (["predictions", "--limit", "many"], "invalid int value"),
    (["audit", "query", "--limit", "x"], "invalid int value"),
    (["reidentify", "--study", PSEUDO], "the following arguments are required: --reason"),
    (["model", "import", "w.pt"], "the following arguments are required: --format"),
    # values out of range
    (["predictions", "--limit", "0"], "--limit must be within"),
    (["results", "list", "--limit", "0"], "--limit must be within"),
    (["audit", "query", "--limit", "0"], "--limit must be"),
    (["evaluate", "--data", ".", "--n-boot", "-1"], "--n-boot must be"),
    (["evaluate", "--data", ".", "--threads", "0"], "--threads must be"),
    # times
    (["predictions", "--since", "last week"], "--since: cannot read time"),
    (["audit", "query", "--until", "tomorrowish"], "--until: cannot read time"),
    (["audit", "export", "--month", "October"], "--month: month must look like"),
    # values of a known set
    (["audit", "query", "--event", "association.rejectd"], "unknown audit event"),
    (["audit", "query", "--outcome", "bad"], "outcome must be one of"),
    (["audit", "verify", "--expect-head", "12:nothex"], "--expect-head takes"),
    # contradicting options
    (["audit", "query", "--month", "2026-10", "--since", "today"], "either --month"),
    (["audit", "export", "--since", "today", "--until", "yesterday"], "--since must be before"),
    (["model", "import", "w.pt", "--format", "torchvision", "--allow-pickle"], "do not apply"),
    # the --study / --reason contract, the same in every command that takes it
    (["predictions", "--study", ORIGINAL], "add --reason"),
    (["results", "retry", "--study", ORIGINAL], "add --reason"),
    (["audit", "query", "--study", ORIGINAL], "add --reason"),
    (["audit", "export", "--study", ORIGINAL], "add --reason"),
    (["predictions", "--reason", "INC-1"], "--reason is only used with --study"),
    (["results", "retry", "--reason", "INC-1"], "--reason is only used with --study"),
    (["audit", "query", "--reason", "INC-1"], "--reason is only used with --study"),
    (["predictions", "--study", "1.2.x", "--reason", "INC-1"], "must be a DICOM UID"),
    (["reidentify", "--reason", " ", "--study", PSEUDO], "non-empty --reason"),
]


@pytest.fixture
def rt(cli_state, tmp_path) -> Runtime:
    (tmp_path / "w.pt").write_bytes(b"not weights")
    return Runtime(load_settings(None))


def _audited(rt: Runtime, event_types: tuple[str, ...]) -> int:
    with rt.read_sessions() as s:
        return s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.event_type.in_(event_types)))


def _exit_code(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        return int(exc.code)


@pytest.mark.parametrize("argv,needle", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_a_usage_error_exits_2_with_one_line_and_shows_nothing(rt, capsys, argv, needle):
    uses = ("predictions.query", "audit.query", "audit.export", "audit.verify", "reid.pseudonymize",
            "results.retry", "model.imported")
    before = _audited(rt, uses)
    capsys.readouterr()
    assert _exit_code(argv) == 2
    out, err = capsys.readouterr()
    assert needle in err and "Traceback" not in err and out == ""
    if not err.startswith("usage:"):  # argparse prints its usage line first, then one error line
        assert err.startswith("cxrd: error: ") and err.count("\n") == 1
    assert _audited(rt, uses) == before  # a refused command is not recorded as a use
