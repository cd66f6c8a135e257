"""`cxrd console`: the web console, in the foreground (what deploy/cxrd-console.service starts).

It runs as its own process beside `cxrd serve`, with the same configuration, database and keys, so a
console that fails or is overloaded never stops images being received.
"""
from __future__ import annotations

import argparse

from daemon.runtime import Runtime


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("console", help="run the web console (HTTPS) in the foreground")
    p.set_defaults(func=run_console, reads_dicom=False)


def run_console(args: argparse.Namespace, rt: Runtime) -> int:
    from daemon.console.server import serve
    from storage import db
    if db.schema_revision(rt.engine) != db.head_revision():
        from daemon.errors import DaemonError
        raise DaemonError("the database schema is not the current one; run `cxrd init` (or start "
                          "`cxrd serve`, which migrates it) before the console")
    return serve(rt)
