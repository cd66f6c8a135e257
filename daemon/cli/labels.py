"""`cxrd labels import FILE.csv` and `cxrd labels export [DIR]`: the hospital's studies as training data."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from daemon.runtime import Runtime


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("labels", help="import ground truth for received images; export labeled images for training")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("import",
                           help="ChestX-ray14-layout CSV keyed by pseudonymous SOP Instance UID")
    a.add_argument("csv", type=Path)
    a.add_argument("--format", choices=("text", "json"), default="text")
    a.set_defaults(func=run_import)
    e = actions.add_parser("export", help="write labeled, de-identified images (never those that may carry "
                                          "burned-in text) as a ChestX-ray14 batch; default: a new retrain inbox batch")
    e.add_argument("dest", type=Path, nargs="?", default=None)
    e.add_argument("--all", action="store_true", help="include labels exported before")
    e.add_argument("--format", choices=("text", "json"), default="text")
    e.set_defaults(func=run_export)


def run_import(args: argparse.Namespace, rt: Runtime) -> int:
    from daemon.stages.training_data import import_labels
    r = import_labels(rt, args.csv)
    if args.format == "json":
        print(json.dumps({"imported": r.imported, "replaced": r.replaced, "problems": r.problems}, indent=2))
    else:
        print(f"labels: {r.imported} imported, {r.replaced} replaced, {len(r.problems)} problem row(s)")
        for problem in r.problems:
            print(f"  {problem}", file=sys.stderr)
    return 0 if not r.problems else 1


def run_export(args: argparse.Namespace, rt: Runtime) -> int:
    from daemon.stages.training_data import export_batch
    r = export_batch(rt, args.dest, include_exported=args.all)
    if args.format == "json":
        print(json.dumps(r, indent=2))
    else:
        print(f"exported {r['images']} labeled image(s) to {r['destination']}; "
              f"{len(r['refused_burned_in'])} refused (burned-in annotation yes/unknown)")
    return 0
