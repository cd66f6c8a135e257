"""The CLI's own error: a command could not do what was asked. `daemon.cli.main` prints it as one line.

Stages, operations and the service raise `daemon.errors.DaemonError` (or their package's error) instead;
the CLI maps those to the same one-line form, so library code never depends on the command line.
"""


class CommandError(Exception):
    """A command could not do what was asked; the message is one safe line (no PHI)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
