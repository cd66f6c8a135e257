"""`cxrd purge [--dry-run]`: crypto-shred images older than `storage.retention_days`, audited.

The daemon runs the same `storage.retention.purge_expired` daily; this command lets an operator see
what is due (`--dry-run`) or run it now. Audit rows are never purged (see docs/compliance.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from daemon.cli.errors import CommandError
from daemon.runtime import Runtime


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("purge", help="crypto-shred stored images older than storage.retention_days "
                                     "(audited; --dry-run only counts)")
    p.add_argument("--dry-run", action="store_true", help="count what would be purged; change nothing")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run_purge, reads_dicom=False)


def run_purge(args: argparse.Namespace, rt: Runtime) -> int:
    days = int(rt.settings.storage.retention_days)
    if days == 0:
        if args.format == "json":
            print(json.dumps({"retention_days": 0, "expired": 0, "dry_run": args.dry_run}))
        else:
            print("cxrd: storage.retention_days = 0: images are kept forever; nothing to purge")
        return 0
    from storage.retention import purge_expired
    if not rt.vault_dir.exists():
        raise CommandError(f"no vault at {rt.vault_dir}; run `cxrd init` first")
    from daemon.stages.training_data import purge_training_copies
    report = purge_expired(rt.sessions, rt.vault, rt.keys.audit_key, days, dry_run=args.dry_run,
                           actor=rt.actor, host=rt.hostname,
                           derived=lambda uids: purge_training_copies(rt.state_dir, Path(rt.settings.retrain.inbox),
                                                                      uids))
    if args.format == "json":
        json.dump(report.as_dict() | {"retention_days": days}, sys.stdout, indent=2)
        print()
    elif report.dry_run:
        print(f"cxrd: {report.expired} images received before {report.cutoff} would be crypto-shredded "
              f"(retention {days} days), and {report.reports_shredded} report texts")
    else:
        print(f"cxrd: crypto-shredded {report.shredded} images received before {report.cutoff} "
              f"({report.missing} already gone) and {report.reports_shredded} report texts; audited")
    return 0
