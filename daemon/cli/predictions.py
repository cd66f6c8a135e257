"""`cxrd predictions` (list what the model said) and `cxrd results list|retry` (what went back to the PACS).

`--study` takes the pseudonymous Study Instance UID or the ORIGINAL one a clinician has in front of
them: the original is mapped with the same keyed hash ingest uses (deterministic, no lookup in the
re-identification map, so no break-glass needed) and never written anywhere. Every predictions
query is audited (`predictions.query`) with the pseudonym only.

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
from daemon.cli import times
from daemon.cli.errors import CommandError
from daemon.runtime import Runtime

if TYPE_CHECKING:
    from storage.models import Result

MAX_LIMIT = 100_000


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("predictions", help="list predictions per instance (probability and call for each finding)")
    p.add_argument("--study", metavar="UID", help="pseudonymous (2.25...) or original Study Instance UID")
    p.add_argument("--since", metavar="TIME", help=f"only predictions made at/after TIME: {times.FORMS}")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N instances, newest first "
                                                                       "(default 100)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=run_predictions, reads_dicom=False)

    r = sub.add_parser("results", help="results sent back to the PACS: list them, retry parked ones")
    r.set_defaults(reads_dicom=False)
    actions = r.add_subparsers(dest="results_command", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="results by state, newest first")
    ls.add_argument("--state", choices=("pending", "sending", "sent", "failed"))
    ls.add_argument("--limit", type=int, default=100, metavar="N")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    ls.set_defaults(func=run_results_list)
    rt_ = actions.add_parser("retry",
                             help="set failed results back to pending (after fixing the destination)")
    rt_.add_argument("--study", metavar="UID", help="only this study (pseudonymous or original UID)")
    rt_.add_argument("--failed", action="store_true", default=True,
                     help="retry results parked as failed (the default and only selection)")
    rt_.add_argument("--format", choices=("table", "json"), default="table")
    rt_.set_defaults(func=run_results_retry)


def study_candidates(rt: Runtime, uid: str) -> tuple[str, ...]:
    """The pseudonyms a --study value can mean: itself (already a pseudonym) and its keyed mapping."""
    uid = uid.strip()
    if not uid or len(uid) > 64 or not all(c.isdigit() or c == "." for c in uid):
        raise CommandError("--study must be a DICOM UID (digits and dots, at most 64 characters)")
    from storage.deid import pseudonymize_uid
    return tuple(dict.fromkeys((uid, pseudonymize_uid(rt.keys.uid_key, uid))))


def _resolved_study(rt: Runtime, uid: str | None) -> str | None:
    """The one pseudonym to filter on (and to audit).

    A value we hold as a pseudonym is used as is; anything else is treated as an original UID and
    replaced by its keyed pseudonym - also when nothing matches, so an original UID typed by a user
    never lands in the audit trail.
    """
    if uid is None:
        return None
    given, *mapped = study_candidates(rt, uid)
    if not mapped:  # a well-known UID maps to itself
        return given
    from sqlalchemy import select

    from storage.models import Instance
    with rt.read_sessions() as s:
        known = s.scalar(select(Instance.id).where(Instance.study_uid == given).limit(1)) is not None
    return given if known else mapped[0]


def query_predictions(rt: Runtime, *, study: str | None, since: datetime | None, limit: int) -> list[dict[str, Any]]:
    """One dict per (instance, model version): pseudonyms, model, time and each label's output."""
    from sqlalchemy import select

    from storage.models import Instance, Prediction
    with rt.read_sessions() as s:
        keys = (select(Prediction.instance_id, Prediction.model_version)
                .join(Instance, Instance.id == Prediction.instance_id).group_by(Prediction.instance_id,
                                                                                Prediction.model_version))
        if study:
            keys = keys.where(Instance.study_uid == study)
        if since is not None:
            keys = keys.where(Prediction.created_at >= since)
        keys = keys.order_by(Prediction.instance_id.desc()).limit(limit)
        pairs = s.execute(keys).all()
        if not pairs:
            return []
        ids = {iid for iid, _ in pairs}
        rows = s.execute(select(Prediction.instance_id, Prediction.model_version, Prediction.label,
                                Prediction.probability, Prediction.positive, Prediction.created_at,
                                Instance.sop_instance_uid, Instance.study_uid, Instance.state)
                         .join(Instance, Instance.id == Prediction.instance_id)
                         .where(Prediction.instance_id.in_(ids))).all()
    wanted = set(pairs)
    out: dict[tuple[int, str], dict[str, Any]] = {}
    for iid, version, label, prob, pos, created, sop, st, state in rows:
        if (iid, version) not in wanted:
            continue
        rec = out.setdefault((iid, version), {
            "instance_uid": sop, "study_uid": st, "model_version": version, "state": state,
            "created_at": created.isoformat(timespec="seconds"), "probabilities": {}, "positive": {}})
        rec["probabilities"][label] = round(float(prob), 6)
        rec["positive"][label] = bool(pos)
    order = {pair: i for i, pair in enumerate(pairs)}
    return [out[k] for k in sorted(out, key=order.__getitem__)]


def run_predictions(args: argparse.Namespace, rt: Runtime) -> int:
    if not 1 <= args.limit <= MAX_LIMIT:
        raise CommandError(f"--limit must be within 1..{MAX_LIMIT}")
    since = times.parse_time(args.since, "--since") if args.since else None
    study = _resolved_study(rt, args.study)
    records = query_predictions(rt, study=study, since=since, limit=args.limit)
    rt.audit("predictions.query", study_uid=study or "", since=since.isoformat() if since else "",
             limit=args.limit, rows=len(records))
    if args.format == "json":
        json.dump(records, sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        _write_csv(records)
    else:
        _print_records(records)
    return 0


def _write_csv(records: list[dict[str, Any]]) -> None:
    w = csv.writer(sys.stdout)
    w.writerow(["instance_uid", "study_uid", "model_version", "created_at", "state",
                *LABELS, *(f"{label}_positive" for label in LABELS)])
    for r in records:
        w.writerow([r["instance_uid"], r["study_uid"], r["model_version"], r["created_at"], r["state"],
                    *(r["probabilities"].get(lbl, "") for lbl in LABELS),
                    *(int(r["positive"][lbl]) if lbl in r["positive"] else "" for lbl in LABELS)])


def _print_records(records: list[dict[str, Any]]) -> None:
    if not records:
        print("no predictions")
    for r in records:
        pos = [f"{lbl} {r['probabilities'][lbl]:.2f}" for lbl in LABELS if r["positive"].get(lbl)]
        print(f"{r['created_at']}  {r['model_version']}  {r['state']:<9} study {r['study_uid']}")
        print(f"    instance {r['instance_uid']}")
        print(f"    positive: {', '.join(pos) if pos else 'none'}")


def _result_dict(r: Result) -> dict[str, Any]:
    return {"study_uid": r.study_uid, "model_version": r.model_version, "kind": r.kind, "state": r.state,
            "attempts": r.attempts, "next_attempt_at": r.next_attempt_at.isoformat(timespec="seconds"),
            "sent_at": r.sent_at.isoformat(timespec="seconds") if r.sent_at else None, "last_error": r.last_error}


def run_results_list(args: argparse.Namespace, rt: Runtime) -> int:
    from sqlalchemy import select

    from storage.models import Result
    with rt.read_sessions() as s:
        stmt = select(Result).order_by(Result.id.desc()).limit(max(1, min(args.limit, MAX_LIMIT)))
        if args.state:
            stmt = stmt.where(Result.state == args.state)
        rows = [_result_dict(r) for r in s.scalars(stmt)]
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    if not rows:
        print("no results")
    for r in rows:
        print(f"{r['state']:<8} {r['kind']:<4} attempts {r['attempts']:<3} {r['model_version']}  study {r['study_uid']}"
              + (f"  ({r['last_error']})" if r["last_error"] else ""))
    return 0


def run_results_retry(args: argparse.Namespace, rt: Runtime) -> int:
    from daemon.stages.results import retry_failed
    study = _resolved_study(rt, args.study) if args.study else None
    with rt.sessions.begin() as s:
        n = retry_failed(s, study_uid=study)
    if args.format == "json":
        print(json.dumps({"requeued": n}))
    else:
        print(f"{n} result(s) set back to pending" + ("" if n else " (none were failed)"))
    return 0
