"""`--study UID [--reason TEXT]`: one contract for every command that selects a study.

cxrd's own rows and reports name studies by their pseudonymous UID (`2.25.…`); a clinician or a
PACS administrator has the ORIGINAL Study Instance UID in front of them. Every command reads the
option the same way:

- without `--reason`, `--study` takes only the pseudonymous form, so an original identifier is never
  searched for (or recorded in the audit trail) by accident;
- with `--reason`, `--study` is an original UID: it is mapped with the keyed pseudonym function
  de-identification used (the re-identification map is never opened), and the use is recorded as a
  `reid.pseudonymize` event (who, why, through which command) in the same transaction as the
  command's own audit row. Only the pseudonym is ever stored.

`record_use` fails closed: when the use cannot be recorded nothing is shown.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from daemon.cli.errors import CommandError
from daemon.runtime import Runtime

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

PSEUDONYM = re.compile(r"2\.25\.[1-9][0-9]{0,38}")
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")  # lenient: originals in the wild have leading zeros
REASON_MAX = 500


@dataclass(frozen=True)
class StudyChoice:
    """The study a command was asked about: its pseudonym (None: every study) and, when the user
    gave an original UID, why."""
    pseudonym: str | None = None
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def original(self) -> bool:
        return bool(self.reason)


def add_options(parser: argparse.ArgumentParser | Any, *, what: str = "only this study") -> None:
    """Add `--study` and `--reason` with the same help everywhere (a parser or an argument group)."""
    parser.add_argument("--study", metavar="UID", help=f"{what}: its pseudonymous Study Instance UID "
                        "(2.25.…); with --reason, its ORIGINAL Study Instance UID (mapped to the pseudonym; "
                        "the use is audited)")
    parser.add_argument("--reason", metavar="TEXT",
                        help="why an original Study Instance UID is used (ticket, request); audited")


def resolve(rt: Runtime, study: str | None, reason: str | None) -> StudyChoice:
    """Command-line `--study`/`--reason` -> the pseudonym to filter on; CommandError (exit 2) on misuse."""
    reason = (reason or "").strip()
    if study is None:
        if reason:
            raise CommandError("--reason is only used with --study (an original Study Instance UID)", 2)
        return StudyChoice()
    study = study.strip()
    if not study:
        raise CommandError("--study needs a UID", 2)
    if not reason:
        if not PSEUDONYM.fullmatch(study):
            raise CommandError("--study without --reason takes a pseudonymous UID (2.25.…); for an original "
                               "Study Instance UID add --reason", 2)
        return StudyChoice(study)
    if len(study) > 64 or not _UID.fullmatch(study):
        raise CommandError("--study must be a DICOM UID (digits and dots, at most 64 characters)", 2)
    from storage.deid import pseudonymize_uid
    return StudyChoice(pseudonymize_uid(rt.keys.uid_key, study), reason[:REASON_MAX],
                       {"study_given_as": "original", "reason": reason[:REASON_MAX]})


def record_use(rt: Runtime, event_type: str, choice: StudyChoice, *, outcome: int = 0,
               alerts: list[dict[str, Any]] | None = None,
               change: Callable[[Session], dict[str, Any]] | None = None, **details: Any) -> dict[str, Any]:
    """Audit one use in one committed transaction: the `reid.pseudonymize` event when an original
    UID was given, any security alerts the command raised (`alerts`: keyword arguments of
    `storage.audit.append`), then the command's own event. `change`, for a command that writes,
    runs in the same transaction and returns details to add (and to return): the change and its
    record commit together or not at all. Nothing is shown if this fails."""
    from storage import audit
    from storage.errors import AuditError
    study = choice.pseudonym or ""
    try:
        with rt.sessions.begin() as s:
            if choice.original:
                audit.append(s, rt.keys.audit_key, event_type="reid.pseudonymize", actor=rt.actor,
                             host=rt.hostname, study_uid=study,
                             details={"reason": choice.reason, "via": event_type})
            for alert in alerts or ():
                audit.append(s, rt.keys.audit_key, actor=rt.actor, host=rt.hostname, **alert)
            changed = change(s) if change is not None else {}
            audit.append(s, rt.keys.audit_key, event_type=event_type, outcome=outcome, actor=rt.actor,
                         host=rt.hostname, study_uid=study, details={**details, **changed})
    except AuditError:
        raise
    except Exception as exc:  # fail closed: no audit row, no output
        raise CommandError(f"cannot record this use ({event_type}: {type(exc).__name__}); nothing was "
                           "shown or changed. Run it with the service's own database account.") from None
    return changed
