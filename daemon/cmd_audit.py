"""`cxrd audit ...`: the audit trail for compliance. Only `verify` lives here so far.

Each action is a function in `ACTIONS` that adds its own sub-parser, so `query` and `export` can be
added (here or from another module: `ACTIONS.append(register_query)`) without touching the others.
Every use of the audit log is itself audited (event 110101 Audit Log Used).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from daemon.errors import CommandError
from daemon.runtime import Runtime
from storage import audit


def common_options() -> argparse.ArgumentParser:
    """Options every audit action takes after its name (`--config`)."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="TOML settings file")
    return c


def register_verify(actions) -> None:  # noqa: ANN001
    p = actions.add_parser("verify", parents=[common_options()],
                           help="check the keyed hash chain; exit 1 naming the first changed, removed "
                                "or reordered row")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run_verify)


ACTIONS: list[Callable[[object], None]] = [register_verify]


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("audit", help="verify (and later query/export) the tamper-evident audit trail")
    actions = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    for add in ACTIONS:
        add(actions)


def record_use(rt: Runtime, event_type: str, outcome: int, details: dict) -> None:
    """Audit a use of the audit log (in its own committed transaction)."""
    with rt.sessions.begin() as s:
        audit.append(s, rt.keys.audit_key, event_type=event_type, outcome=outcome, actor=rt.actor,
                     host=rt.hostname, details=details)


def run_verify(args: argparse.Namespace, rt: Runtime) -> int:
    key = rt.keys.audit_key
    with rt.read_sessions() as s:
        report = audit.verify(s, key)
    record_use(rt, "audit.verify", 0 if report.ok else 12, report.as_dict())
    if args.format == "json":
        json.dump(report.as_dict(), sys.stdout, indent=2)
        print()
        return 0 if report.ok else 1
    if not report.ok:
        raise CommandError(f"audit chain broken at row {report.first_bad_seq}: {report.reason}")
    print(f"cxrd: audit chain intact ({report.rows} rows, last seq {report.last_seq})")
    return 0
