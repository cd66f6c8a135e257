"""The times people type after `--since`, `--until` and `--month`, read the same way by every command.

A person means their own wall clock: a date alone is local midnight, a date-time without an offset
is local time; an explicit offset (`Z`, `+01:00`) is honoured. `now`, `today` and `yesterday` are
accepted because that is how people ask for recent events. The rules themselves are
`storage.audit_query.parse_time`, which the audit trail's filters are defined by; this module gives
every command the same forms, the same help text and the same one-line usage error naming the option.
"""
from __future__ import annotations

from datetime import datetime

from daemon.cli.errors import CommandError

#: what a TIME argument accepts, for the options' help texts
FORMS = ("ISO 8601 (2026-11-24, '2026-11-24 08:00' in local time, 2026-11-24T08:00:00+01:00) "
         "or now/today/yesterday")


def parse_time(text: str, option: str) -> datetime:
    """A time given to `option` -> an aware datetime in UTC; CommandError (usage, exit 2) if unreadable."""
    from storage.audit_query import AuditQueryError
    from storage.audit_query import parse_time as parse_stored
    try:
        return datetime.fromisoformat(parse_stored(text))
    except AuditQueryError as exc:
        raise CommandError(f"{option}: {exc}", 2) from None


def month_bounds(text: str, option: str = "--month") -> tuple[datetime, datetime]:
    """`2026-10` -> the first instants (UTC) of that local calendar month and of the next one."""
    from storage.audit_query import AuditQueryError
    from storage.audit_query import month_bounds as bounds
    try:
        first, after = bounds(text)
    except AuditQueryError as exc:
        raise CommandError(f"{option}: {exc}", 2) from None
    return datetime.fromisoformat(first), datetime.fromisoformat(after)


def stored(moment: datetime) -> str:
    """The UTC ISO string audit rows are stored and compared with (see `storage.audit_query`)."""
    return moment.isoformat(timespec="microseconds")
