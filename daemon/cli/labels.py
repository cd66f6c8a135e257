"""`cxrd labels import FILE.csv`, `cxrd labels export [DIR]`, `cxrd labels list` and
`cxrd labels from-report FILE`.

Import and export move the hospital's studies in and out as training data; from-report shows what the
report labeller reads in one report, for the person who runs it on their own file.
"""
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
    c = actions.add_parser("list", help="count ground-truth labels by source (manual, report) and radiology "
                                        "reports from the RIS by state")
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.set_defaults(func=run_list, reads_dicom=False)
    r = actions.add_parser("from-report", help="label one radiology report text file (FINDINGS/IMPRESSION) "
                                               "for inspection: each finding and the phrase that decided it")
    r.add_argument("report", type=Path)
    r.add_argument("--format", choices=("text", "json"), default="text")
    r.set_defaults(func=run_from_report, needs_state=False, reads_dicom=False)


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


def run_list(args: argparse.Namespace, rt: Runtime) -> int:
    from storage.ground_truth import counts_by_source
    from storage.reports import counts_by_state
    with rt.read_sessions() as session:
        labels, reports = counts_by_source(session), counts_by_state(session)
    if args.format == "json":
        print(json.dumps({"labels": labels, "reports": reports}, indent=2))
        return 0
    print("labels:  " + ", ".join(f"{n} {src}" for src, n in labels.items()) + f" ({sum(labels.values())} in all)")
    print("reports: " + ", ".join(f"{n} {state}" for state, n in reports.items()))
    return 0


def run_export(args: argparse.Namespace, rt: Runtime) -> int:
    from daemon.stages.training_data import export_batch
    r = export_batch(rt, args.dest, include_exported=args.all)
    if args.format == "json":
        print(json.dumps(r, indent=2))
    else:
        print(f"exported {r['images']} labeled image(s) to {r['destination']}; "
              f"{len(r['refused_burned_in'])} refused (burned-in annotation yes/unknown)")
    return 0


MAX_REPORT_BYTES = 1 << 20  # a report is a few kilobytes; anything near this is not one report


def read_report(path: Path) -> str:
    """The text of a report file, or a CommandError (exit 2) that says in one line what is wrong."""
    from daemon.cli.errors import CommandError
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_REPORT_BYTES + 1)
    except FileNotFoundError:
        raise CommandError(f"no such report file: {path}", 2) from None
    except IsADirectoryError:
        raise CommandError(f"not a file: {path}", 2) from None
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or type(exc).__name__}", 2) from None
    if len(raw) > MAX_REPORT_BYTES:
        raise CommandError(f"{path}: larger than {MAX_REPORT_BYTES // 1024} KiB; give one report per file", 2)
    if b"\0" in raw:
        raise CommandError(f"{path}: not a text file (binary content)", 2)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")  # reports exported from Windows RIS clients
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f")
    if controls > max(2, len(text) // 100):
        raise CommandError(f"{path}: not a text file (control characters)", 2)
    if not text.strip():
        raise CommandError(f"{path}: empty report", 2)
    return text


def run_from_report(args: argparse.Namespace, rt: Runtime) -> int:
    from cxrmodel.labels import LABELS
    from cxrmodel.report_labeller import label_report
    found = label_report(read_report(args.report))
    if args.format == "json":
        print(json.dumps({"file": str(args.report), "findings": {
            label: ({"status": f.status, "section": f.section, "evidence": f.evidence}
                    if (f := found.get(label)) else None) for label in LABELS}}, indent=2))
        return 0
    width = max(len(label) for label in LABELS)
    for label in LABELS:
        f = found.get(label)
        if f is None:
            print(f"{label:{width}}  not mentioned")
        else:
            print(f"{label:{width}}  {f.status:9}  {f.section}: \"{f.evidence}\"")
    if not found:
        print("(the report names none of the 14 findings)")
    return 0
