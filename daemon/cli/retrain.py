"""`cxrd retrain`: run the scheduled retraining job now (what the schedule runs), and show past runs."""
from __future__ import annotations

import argparse
import json

from daemon.runtime import Runtime


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("retrain", help="run one retraining now from the inbox, or list past runs")
    p.add_argument("--list", action="store_true", help="list past runs instead of running one")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run_retrain)


def run_retrain(args: argparse.Namespace, rt: Runtime) -> int:
    if args.list:
        return _list_runs(args, rt)
    from daemon.stages.retraining import retrain_once
    summary = retrain_once(rt, "manual")
    if args.format == "json":
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(f"retrain: {summary['outcome']}" + (f" ({summary['reason']})" if "reason" in summary else "")
              + (f": candidate {summary['candidate']}" if summary.get("candidate") else ""))
        for line in summary.get("reasons", []):
            print(f"  {line}")
    return 0 if summary["outcome"] != "failed" else 1


def _list_runs(args: argparse.Namespace, rt: Runtime) -> int:
    from sqlalchemy import select

    from storage.models import RetrainRun
    with rt.read_sessions() as s:
        runs = [{"id": r.id, "started_at": r.started_at.isoformat(), "trigger": r.trigger,
                 "outcome": r.outcome, "candidate": r.candidate_version, "report": json.loads(r.report or "{}")}
                for r in s.scalars(select(RetrainRun).order_by(RetrainRun.id))]
    if args.format == "json":
        print(json.dumps(runs, indent=2))
    else:
        for r in runs:
            print(f"{r['id']:4d} {r['started_at'][:19]} {r['trigger']:8} {r['outcome']:9} {r['candidate']}")
    return 0
