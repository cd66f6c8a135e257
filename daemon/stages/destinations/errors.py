"""The two ways a destination can fail; the results stage maps them to its retry and park rules."""
from __future__ import annotations


class SendError(Exception):
    """The destination could not be reached, timed out or answered "not now"; worth retrying later.
    The message is one line naming the destination and the reason, never an identifier."""


class RefusedError(Exception):
    """The destination refused the content itself (a retry would be refused the same way): the
    result is parked at once. The message is one line, never an identifier."""
