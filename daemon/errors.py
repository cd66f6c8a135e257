"""The error the service, its stages and operations raise for what an operator must fix.

The message is one safe line (no patient data): the CLI prints it as it is, `cxrd serve` exits with it.
"""


class DaemonError(Exception):
    """Something the operator must fix (a directory, a port, a destination, an input file)."""
