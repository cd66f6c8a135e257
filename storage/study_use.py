"""Choosing a study by UID, and recording that use: one contract for the CLI and the web console.

cxrd's own rows and reports name studies by their pseudonymous UID (`2.25.…`); a clinician or a
PACS administrator has the ORIGINAL Study Instance UID in front of them. Every caller reads the
choice the same way:

- without a reason, only the pseudonymous form is taken, so an original identifier is never
  searched for (or recorded in the audit trail) by accident;
- with a reason, the UID is an original: it is mapped with the keyed pseudonym function
  de-identification used (the re-identification map is never opened), and the use is recorded as a
  `reid.pseudonymize` event (who, why, through which action) in the same transaction as the
  caller's own audit row. Only the pseudonym is ever stored.

`record_use` fails closed: when the use cannot be recorded the caller must show nothing.
Messages name the caller's own fields (`--study`/`--reason` on the command line, the form's labels
in the console) so each front end gives the same rule in its own words.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from storage.errors import AuditError, StorageError

PSEUDONYM = re.compile(r"2\.25\.[1-9][0-9]{0,38}")
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")  # lenient: originals in the wild have leading zeros
REASON_MAX = 500

if TYPE_CHECKING:  # the CLI reads the constants above while it builds --help: no database library then
    from sqlalchemy.orm import Session, sessionmaker


class StudyChoiceError(StorageError):
    """The study/reason pair breaks the contract (a usage error: the caller says so and stops)."""


class UseNotRecorded(StorageError):
    """The audit row for a use could not be written; nothing may be shown or changed."""

    def __init__(self, event_type: str, cause: str) -> None:
        super().__init__(f"cannot record this use ({event_type}: {cause})")
        self.event_type, self.cause = event_type, cause


@dataclass(frozen=True)
class StudyChoice:
    """The study a caller was asked about: its pseudonym (None: every study) and, when the user
    gave an original UID, why."""
    pseudonym: str | None = None
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def original(self) -> bool:
        return bool(self.reason)


def choose(uid_key: Callable[[], bytes], study: str | None, reason: str | None, *, study_name: str = "--study",
           reason_name: str = "--reason") -> StudyChoice:
    """A study UID (pseudonymous, or original with a reason) -> the pseudonym to filter on.

    `uid_key` is called only once the UID is known to be a well-formed original, so a usage error is
    reported before any key is read. Raises StudyChoiceError naming `study_name`/`reason_name`."""
    reason = (reason or "").strip()
    if study is None:
        if reason:
            raise StudyChoiceError(f"{reason_name} is only used with {study_name} (an original Study "
                                   "Instance UID)")
        return StudyChoice()
    study = study.strip()
    if not study:
        raise StudyChoiceError(f"{study_name} needs a UID")
    if not reason:
        if not PSEUDONYM.fullmatch(study):
            raise StudyChoiceError(f"{study_name} without {reason_name} takes a pseudonymous UID (2.25.…); "
                                   f"for an original Study Instance UID add {reason_name}")
        return StudyChoice(study)
    if len(study) > 64 or not _UID.fullmatch(study):
        raise StudyChoiceError(f"{study_name} must be a DICOM UID (digits and dots, at most 64 characters)")
    from storage.deid import pseudonymize_uid
    return StudyChoice(pseudonymize_uid(uid_key(), study), reason[:REASON_MAX],
                       {"study_given_as": "original", "reason": reason[:REASON_MAX]})


def record_use(sessions: sessionmaker[Session], audit_key: bytes, event_type: str, choice: StudyChoice, *,
               actor: str, host: str, outcome: int = 0, alerts: list[dict[str, Any]] | None = None,
               change: Callable[[Session], dict[str, Any]] | None = None, **details: Any) -> dict[str, Any]:
    """Audit one use in one committed transaction: the `reid.pseudonymize` event when an original
    UID was given, any security alerts the action raised (`alerts`: keyword arguments of
    `storage.audit.append`), then the action's own event. `change`, for an action that writes,
    runs in the same transaction and returns details to add (and to return): the change and its
    record commit together or not at all. Raises UseNotRecorded (or AuditError) when it fails."""
    from storage import audit
    study = choice.pseudonym or ""
    try:
        with sessions.begin() as s:
            if choice.original:
                audit.append(s, audit_key, event_type="reid.pseudonymize", actor=actor, host=host,
                             study_uid=study, details={"reason": choice.reason, "via": event_type})
            for alert in alerts or ():
                audit.append(s, audit_key, actor=actor, host=host, **alert)
            changed = change(s) if change is not None else {}
            audit.append(s, audit_key, event_type=event_type, outcome=outcome, actor=actor, host=host,
                         study_uid=study, details={**details, **changed})
    except AuditError:
        raise
    except Exception as exc:  # fail closed: no audit row, no output
        raise UseNotRecorded(event_type, type(exc).__name__) from None
    return changed
