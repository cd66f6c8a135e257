"""`cxrd predictions` (list what the model said) and `cxrd results list|retry` (what went back to the PACS).

`--study` follows the one contract of `daemon.cli.studies`: a pseudonymous Study Instance UID, or with
`--reason` the ORIGINAL one a clinician has in front of them (mapped with the keyed hash ingest uses,
recorded as a `reid.pseudonymize` event, never written anywhere). Every predictions query is audited
(`predictions.query`) with the pseudonym only, before anything is shown.

Each prediction row carries a MAC (`storage.records`). A listing checks every row it shows: an
instance whose rows fail (edited in SQL, moved, written without the key) is listed as failing
authentication with its values withheld, and the query raises a security alert in the audit trail,
so an edited probability is never printed as what the model said.

Listings show the newest N and print them oldest first (as `tail` does), like every cxrd listing.

`cxrd results retry` is the way back for a result parked as `failed` after `max_attempts`: once the
destination works again it sets those rows to pending with a fresh attempt count, and the running
daemon's sender picks them up within a second.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cxrmodel.labels import LABELS
from daemon.cli import studies, times
from daemon.cli.errors import CommandError
from daemon.runtime import Runtime

if TYPE_CHECKING:
    from storage.models import Result

MAX_LIMIT = 100_000


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("predictions", help="list predictions per instance (probability and call for each finding)")
    studies.add_options(p, what="only predictions of this study")
    p.add_argument("--since", metavar="TIME", help=f"only predictions made at/after TIME: {times.FORMS}")
    p.add_argument("--limit", type=int, default=100, metavar="N",
                   help="the newest N instances, listed oldest first (default 100)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=run_predictions, reads_dicom=False)

    r = sub.add_parser("results", help="results sent back to the PACS: list them, retry parked ones")
    r.set_defaults(reads_dicom=False)
    actions = r.add_subparsers(dest="results_command", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="results by state: the newest N, listed oldest first")
    ls.add_argument("--state", choices=("pending", "sending", "sent", "failed"))
    ls.add_argument("--limit", type=int, default=100, metavar="N", help="the newest N results (default 100)")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    ls.set_defaults(func=run_results_list)
    rt_ = actions.add_parser("retry",
                             help="set failed results back to pending (after fixing the destination)")
    studies.add_options(rt_, what="only results of this study")
    rt_.add_argument("--failed", action="store_true", default=True,
                     help="retry results parked as failed (the default and only selection)")
    rt_.add_argument("--format", choices=("table", "json"), default="table")
    rt_.set_defaults(func=run_results_retry)


def query_predictions(rt: Runtime, *, study: str | None, since: datetime | None, limit: int) -> list[dict[str, Any]]:
    """One dict per (instance, model version), the newest `limit` listed oldest first: pseudonyms,
    model, time, and each label's output - or, when any of its rows fails authentication,
    `authentic: False` and no values."""
    from sqlalchemy import func, select

    from storage import records
    from storage.models import Instance, Prediction
    with rt.read_sessions() as s:
        keys = (select(Prediction.instance_id, Prediction.model_version)
                .join(Instance, Instance.id == Prediction.instance_id).group_by(Prediction.instance_id,
                                                                                Prediction.model_version))
        if study:
            keys = keys.where(Instance.study_uid == study)
        if since is not None:
            keys = keys.where(Prediction.created_at >= since)
        keys = keys.order_by(func.max(Prediction.id).desc()).limit(limit)
        pairs = list(reversed(s.execute(keys).all()))
        if not pairs:
            return []
        ids = {iid for iid, _ in pairs}
        rows = s.execute(select(Prediction.instance_id, Prediction.model_version, Prediction.label,
                                Prediction.probability, Prediction.threshold, Prediction.positive,
                                Prediction.mac, Prediction.created_at, Instance.sop_instance_uid,
                                Instance.study_uid, Instance.state)
                         .join(Instance, Instance.id == Prediction.instance_id)
                         .where(Prediction.instance_id.in_(ids))).all()
    wanted = set(pairs)
    key = rt.keys.record_key
    out: dict[tuple[int, str], dict[str, Any]] = {}
    for iid, version, label, prob, thr, pos, tag, created, sop, st, state in rows:
        if (iid, version) not in wanted:
            continue
        rec = out.setdefault((iid, version), {
            "instance_uid": sop, "study_uid": st, "model_version": version, "state": state,
            "created_at": created.isoformat(timespec="seconds"), "authentic": True,
            "probabilities": {}, "positive": []})
        rec["probabilities"][label] = round(float(prob), 6)
        if pos:
            rec["positive"].append(label)
        if not records.verify(key, tag, sop, version, label, prob, thr, pos):
            rec["authentic"] = False
    order = {pair: i for i, pair in enumerate(pairs)}
    listed = [out[k] for k in sorted(out, key=order.__getitem__)]
    for rec in listed:
        rec["positive"] = [lbl for lbl in LABELS if lbl in rec["positive"]] + \
            sorted(lbl for lbl in rec["positive"] if lbl not in LABELS)
        if not rec["authentic"]:  # never show an edited value as what the model said
            rec["probabilities"], rec["positive"] = None, None
    return listed


def run_predictions(args: argparse.Namespace, rt: Runtime) -> int:
    if not 1 <= args.limit <= MAX_LIMIT:
        raise CommandError(f"--limit must be within 1..{MAX_LIMIT}", 2)
    since = times.parse_time(args.since, "--since") if args.since else None
    study = studies.resolve(rt, args.study, args.reason)
    records = query_predictions(rt, study=study.pseudonym, since=since, limit=args.limit)
    forged = [r for r in records if not r["authentic"]]
    alerts = [{"event_type": "security.tamper", "outcome": 12, "study_uid": forged[0]["study_uid"],
               "object_uid": forged[0]["instance_uid"],
               "details": {"what": "predictions", "via": "predictions.query", "instances": len(forged),
                           "reason": "prediction row(s) failed authentication (edited or not written by cxrd)"}}
              ] if forged else []
    studies.record_use(rt, "predictions.query", study, alerts=alerts, since=since.isoformat() if since else "",
                       limit=args.limit, rows=len(records), failed_authentication=len(forged), **study.extra)
    if args.format == "json":
        json.dump(records, sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        _write_csv(records)
    else:
        _print_records(records)
    if forged:
        print(f"cxrd: warning: {len(forged)} instance(s) failed authentication: their prediction rows were "
              "changed outside cxrd; values withheld, security alert recorded", file=sys.stderr)
    return 0


def _write_csv(records: list[dict[str, Any]]) -> None:
    w = csv.writer(sys.stdout)
    w.writerow(["instance_uid", "study_uid", "model_version", "created_at", "state", "authentic",
                *LABELS, *(f"{label}_positive" for label in LABELS)])
    for r in records:
        probs, positive = r["probabilities"] or {}, r["positive"] or []
        w.writerow([r["instance_uid"], r["study_uid"], r["model_version"], r["created_at"], r["state"],
                    int(r["authentic"]), *(probs.get(lbl, "") for lbl in LABELS),
                    *((int(lbl in positive) if lbl in probs else "") for lbl in LABELS)])


def _print_records(records: list[dict[str, Any]]) -> None:
    if not records:
        print("no predictions")
    for r in records:
        print(f"{r['created_at']}  {r['model_version']}  {r['state']:<9} study {r['study_uid']}")
        print(f"    instance {r['instance_uid']}")
        if not r["authentic"]:
            print("    FAILED AUTHENTICATION: rows changed outside cxrd; values withheld")
            continue
        pos = [f"{lbl} {r['probabilities'][lbl]:.2f}" for lbl in r["positive"]]
        print(f"    positive: {', '.join(pos) if pos else 'none'}")


def _result_dict(r: Result, reports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"study_uid": r.study_uid, "model_version": r.model_version, "kind": r.kind, "state": r.state,
            "attempts": r.attempts, "next_attempt_at": r.next_attempt_at.isoformat(timespec="seconds"),
            "sent_at": r.sent_at.isoformat(timespec="seconds") if r.sent_at else None, "last_error": r.last_error,
            "reports": reports}


def _sent_reports(s, result_ids: list[int]) -> dict[int, list[dict[str, Any]]]:  # noqa: ANN001 - Session
    """Each result's report objects the PACS acknowledged, oldest first, with the one that replaced it:
    a study's report is replaced, never duplicated, when images arrive after it was sent."""
    from sqlalchemy import select

    from storage.models import SentReport
    rows = list(s.scalars(select(SentReport).where(SentReport.result_id.in_(result_ids)).order_by(SentReport.id)))
    uid_of = {r.id: r.sop_instance_uid for r in rows}
    out: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r.result_id, []).append({
            "sop_instance_uid": r.sop_instance_uid, "sent_at": r.sent_at.isoformat(timespec="seconds"),
            "analysed": r.analysed, "not_analysed": r.not_analysed,
            "superseded_by": uid_of.get(r.superseded_by) if r.superseded_by else None})
    return out


def run_results_list(args: argparse.Namespace, rt: Runtime) -> int:
    from sqlalchemy import select
    if not 1 <= args.limit <= MAX_LIMIT:
        raise CommandError(f"--limit must be within 1..{MAX_LIMIT}", 2)

    from storage.models import Result
    with rt.read_sessions() as s:
        stmt = select(Result).order_by(Result.id.desc()).limit(args.limit)
        if args.state:
            stmt = stmt.where(Result.state == args.state)
        results = list(s.scalars(stmt))[::-1]  # the newest N, oldest first
        reports = _sent_reports(s, [r.id for r in results])
        rows = [_result_dict(r, reports.get(r.id, [])) for r in results]
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    if not rows:
        print("no results")
    for r in rows:
        print(f"{r['state']:<8} {r['kind']:<4} attempts {r['attempts']:<3} {r['model_version']}  study {r['study_uid']}"
              + (f"  ({r['last_error']})" if r["last_error"] else ""))
        for rep in r["reports"]:
            print(f"    report {rep['sop_instance_uid']} sent {rep['sent_at']}: {rep['analysed']} image(s) analysed, "
                  f"{rep['not_analysed']} not" + (f"; superseded by {rep['superseded_by']}" if rep["superseded_by"] else ""))
    return 0


def run_results_retry(args: argparse.Namespace, rt: Runtime) -> int:
    from daemon.stages.results import retry_failed
    study = studies.resolve(rt, args.study, args.reason)
    n = studies.record_use(rt, "results.retry", study, **study.extra,
                           change=lambda s: {"requeued": retry_failed(s, study_uid=study.pseudonym)})["requeued"]
    if args.format == "json":
        print(json.dumps({"requeued": n}))
    else:
        print(f"{n} result(s) set back to pending" + ("" if n else " (none were failed)"))
    return 0
