"""The `cxrd` command: one entry point, one module per command group, one line per failure.

Each module of `daemon.cli` registers its sub-commands; this module only parses arguments, loads
settings, and maps every error callers must handle to a one-line message and an exit status
(2 for configuration and usage errors, 1 for anything else), so no command ever shows a traceback.

Command modules import at their top only what registering their arguments needs; the libraries a
command uses are imported inside the function that runs it. Every command module is imported to
build the parser, so one heavy import at module level would be paid by every command, `--help`
included (tests/daemon/cli/test_imports.py holds the line). For the same reason a command that never
reads DICOM says so (`set_defaults(reads_dicom=False)`), and only the others import pydicom to silence
its warnings; a command that does not say so gets them silenced, which is never wrong, only slower.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from config import ConfigError, load_settings
from daemon.cli.args import CommandParser
from daemon.cli.errors import CommandError
from daemon.errors import DaemonError
from daemon.ops import logs
from daemon.runtime import Runtime

# Modules that add sub-commands, in the order `cxrd --help` lists them.
COMMAND_MODULES = [
    "daemon.cli.service",     # init, serve, check-config, status
    "daemon.cli.model",       # predict; model list / import / promote / rollback
    "daemon.cli.audit",       # audit verify / query / export
    "daemon.cli.reidentify",  # reidentify (break glass)
    "daemon.cli.keys",        # keys list / rotate / rewrap / retire
    "daemon.cli.retrain",     # retrain now / list runs
    "daemon.cli.purge",       # purge expired images (crypto-shredding)
    "daemon.cli.backup",      # backup / restore
    "daemon.cli.labels",      # labels import / export
    "daemon.cli.train",       # train / evaluate
    "daemon.cli.predictions", # predictions; results list / retry
    "daemon.cli.console",     # console (the web console)
    "daemon.cli.users",       # users add / list / disable / enable / reset-password / set-role
]

# Commands that may run without an initialised state directory: `init` and `serve` create it,
# `restore` fills a new one, `check-config` reads nothing. Every other command first checks that the
# state exists (`Runtime.require_state`) and, if not, says where it looked and creates nothing.
STATELESS_COMMANDS = frozenset({"init", "serve", "restore", "check-config"})
# A subcommand that reads only its own argument file sets `needs_state=False` (`labels from-report`).

log = logging.getLogger("cxrd.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="cxrd",
        description="Chest X-ray AI gateway: DICOM in, de-identified and encrypted at rest, "
                    "DenseNet121 findings out, every step audited.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # database, vault, keys, models and exports: readable by the service user only
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        return _fail(str(exc), 2)
    logs.configure(settings.log.level, settings.log.format)
    if getattr(args, "reads_dicom", True):
        logs.quiet_pydicom()
    try:
        rt = Runtime(settings, getattr(args, "config", None))
        if args.command not in STATELESS_COMMANDS and getattr(args, "needs_state", True):
            rt.require_state()
        return int(args.func(args, rt) or 0)
    except CommandError as exc:
        return _fail(str(exc), exc.exit_code)
    except DaemonError as exc:
        return _fail(str(exc), 1)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # library errors carry safe one-line messages; others only their type
        known = _known_error(exc)
        if known is None:
            log.error("command.crashed", exc_info=exc)
            return _fail(f"internal error ({logs.safe_exception_text(exc)}); see the log line above", 1)
        return _fail(known, 1)


def _known_error(exc: Exception) -> str | None:
    """One-line text for the exception types packages declare for their callers."""
    from storage.errors import DatabaseUnavailable
    if isinstance(exc, DatabaseUnavailable):
        return str(exc)
    module = type(exc).__module__
    if module.startswith(("storage.", "cxrmodel.", "config.")) and type(exc).__name__.endswith("Error"):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return None


def _fail(message: str, code: int) -> int:
    print(f"cxrd: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
