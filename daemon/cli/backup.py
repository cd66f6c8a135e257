"""`cxrd backup DEST` and `cxrd restore SRC`: what IT runs nightly and after losing a disk."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from daemon.runtime import Runtime


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("backup", help="copy database snapshot, vault, keyring and models to an empty directory "
                                      "(safe while the daemon runs; the master key only if asked)")
    p.add_argument("dest", type=Path, help="empty or new directory")
    p.add_argument("--include-master-key", action="store_true",
                   help="also copy the master key (then protect the backup like the key itself)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run_backup, reads_dicom=False)
    p = sub.add_parser("restore", help="restore a backup into a new state directory and verify it "
                                       "(audit chain against the backup's head, every instance's object present)")
    p.add_argument("src", type=Path, help="a directory made by `cxrd backup`")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run_restore, reads_dicom=False)


def run_backup(args: argparse.Namespace, rt: Runtime) -> int:
    from daemon.ops.backup import backup
    m = backup(rt, args.dest, args.include_master_key)
    if args.format == "json":
        print(json.dumps(m, indent=2))
    else:
        print(f"backup in {args.dest}: {m['instances']} instances, {m['vault_objects']} vault objects, "
              f"audit chain head {m['audit_head'][0]}"
              + ("" if m["master_key_included"] else f"; master key NOT included (keep {rt.key_file} safe elsewhere)")
              + ("; database not included: back it up with pg_dump" if m["database"] != "sqlite" else ""))
    return 0


def run_restore(args: argparse.Namespace, rt: Runtime) -> int:
    from daemon.ops.backup import restore
    r = restore(rt, args.src)
    if args.format == "json":
        print(json.dumps(r, indent=2))
    else:
        print(f"restored {r['instances']} instances into {rt.state_dir}; audit chain verified "
              f"({r['audit_rows']} rows, head {r['audit_head'][0]})")
    return 0
