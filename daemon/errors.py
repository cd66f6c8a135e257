"""Errors the CLI prints as one line; library errors are mapped to these in `daemon.cli`."""


class CommandError(Exception):
    """A command could not do what was asked; the message is one safe line (no PHI)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
