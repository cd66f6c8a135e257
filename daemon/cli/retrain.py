"""`cxrd retrain`: run the scheduled retraining job now (what the schedule runs), and show past runs.

Each run's line says where its new images came from: the ground-truth store's manual labels (`cxrd
labels import`) and report labels, and inbox batches; and how many labeled images the store could
not give (Burned In Annotation not NO, unreadable, uncertain). `--list` also shows, under each run
whose candidate ran in shadow, its live comparison with the current model on the same labeled
studies (`daemon.stages.shadow`), and the shadow running now.
"""
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
        if "new_sources" in summary:
            print(f"  {sources_line(summary)}")
        for line in summary.get("reasons", []):
            print(f"  {line}")
    return 0 if summary["outcome"] != "failed" else 1


def sources_line(summary: dict) -> str:
    """"12 new image(s): 3 manual label(s), 9 report label(s), 0 from inbox batches; 5 refused ..." """
    src = summary.get("new_sources") or {}
    line = (f"{summary.get('new_images', 0)} new image(s): {src.get('manual', 0)} manual label(s), "
            f"{src.get('report', 0)} report label(s), {src.get('inbox', 0)} from inbox batches")
    store = summary.get("label_store")
    if store is None:
        return line + " (label store not used: retrain.use_label_store = false)"
    left = store.get("left_out") or []  # the run's own words (daemon.stages.retraining)
    return line + ("; label store: " + "; ".join(left) if left else "")


def _list_runs(args: argparse.Namespace, rt: Runtime) -> int:
    from sqlalchemy import select

    from storage.models import RetrainRun
    with rt.read_sessions() as s:
        runs = [{"id": r.id, "started_at": r.started_at.isoformat(), "trigger": r.trigger,
                 "outcome": r.outcome, "candidate": r.candidate_version, "report": json.loads(r.report or "{}")}
                for r in s.scalars(select(RetrainRun).order_by(RetrainRun.id))]
    shadow, live = _live_shadow(rt, {r["candidate"] for r in runs if r["candidate"]})
    for r in runs:
        r["live_shadow"] = live[r["candidate"]].to_dict() if r["candidate"] in live else None
    if args.format == "json":
        print(json.dumps(runs, indent=2))
    else:
        for r in runs:
            print(f"{r['id']:4d} {r['started_at'][:19]} {r['trigger']:8} {r['outcome']:9} {r['candidate']}")
            if "new_sources" in r["report"]:
                print(f"     {sources_line(r['report'])}")
            if r["candidate"] in live:
                print(f"     live shadow vs {live[r['candidate']].current or '-'}: {live[r['candidate']].summary}")
        if shadow["version"]:
            now = live.get(shadow["version"])
            print(f"shadow now: {shadow['version']} (since {shadow['since']}, {shadow['origin']}): "
                  + (f"live vs {now.current or '-'}: {now.summary}" if now else "no live image scored yet"))
    return 0


def _live_shadow(rt: Runtime, candidates: set[str]):  # noqa: ANN202 - (pointer, {version: Comparison})
    """The shadow pointer, and the live comparison of every candidate that ran in shadow (torch-free)."""
    from cxrmodel.pointer import read_pointer
    from cxrmodel.shadow_pointer import read_shadow
    from daemon.stages.shadow import live_comparison
    from storage.shadow import versions

    current = read_pointer(rt.models_dir)["version"]
    shadow = read_shadow(rt.models_dir)
    with rt.read_sessions() as s:
        scored = set(versions(s))
    wanted = (candidates | ({shadow["version"]} if shadow["version"] else set())) & scored - {current}
    min_positives = int(rt.settings.model.promotion.min_positives)
    live = {v: c for v in sorted(wanted)
            if (c := live_comparison(rt.read_sessions, rt.keys, v, current, min_positives=min_positives)) is not None}
    return shadow, live
