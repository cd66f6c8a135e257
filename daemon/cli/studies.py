"""`--study UID [--reason TEXT]`: one contract for every command that selects a study.

The rules live in `storage.study_use` (the web console follows them too): without `--reason`,
`--study` takes only the pseudonymous form (`2.25.…`); with `--reason` it is an ORIGINAL Study
Instance UID, mapped to its pseudonym, and the use is recorded as a `reid.pseudonymize` event in
the same transaction as the command's own audit row. This module gives every command the same
options and help, and turns a broken rule into a usage error (exit 2).

`record_use` fails closed: when the use cannot be recorded nothing is shown.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Callable

from daemon.cli.errors import CommandError
from daemon.runtime import Runtime
from storage.study_use import PSEUDONYM, REASON_MAX, StudyChoice, StudyChoiceError, UseNotRecorded

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["PSEUDONYM", "REASON_MAX", "StudyChoice", "add_options", "record_use", "resolve"]


def add_options(parser: argparse.ArgumentParser | Any, *, what: str = "only this study") -> None:
    """Add `--study` and `--reason` with the same help everywhere (a parser or an argument group)."""
    parser.add_argument("--study", metavar="UID", help=f"{what}: its pseudonymous Study Instance UID "
                        "(2.25.…); with --reason, its ORIGINAL Study Instance UID (mapped to the pseudonym; "
                        "the use is audited)")
    parser.add_argument("--reason", metavar="TEXT",
                        help="why an original Study Instance UID is used (ticket, request); audited")


def resolve(rt: Runtime, study: str | None, reason: str | None) -> StudyChoice:
    """Command-line `--study`/`--reason` -> the pseudonym to filter on; CommandError (exit 2) on misuse."""
    from storage.study_use import choose
    try:
        return choose(lambda: rt.keys.uid_key, study, reason)
    except StudyChoiceError as exc:
        raise CommandError(str(exc), 2) from None


def record_use(rt: Runtime, event_type: str, choice: StudyChoice, *, outcome: int = 0,
               alerts: list[dict[str, Any]] | None = None,
               change: Callable[[Session], dict[str, Any]] | None = None, **details: Any) -> dict[str, Any]:
    """Audit one use as the person running this command (see `storage.study_use.record_use`); nothing
    is shown if this fails."""
    from storage.study_use import record_use as record
    try:
        return record(rt.sessions, rt.keys.audit_key, event_type, choice, actor=rt.actor, host=rt.hostname,
                      outcome=outcome, alerts=alerts, change=change, **details)
    except UseNotRecorded as exc:
        raise CommandError(f"cannot record this use ({exc.event_type}: {exc.cause}); nothing was "
                           "shown or changed. Run it with the service's own database account.") from None
