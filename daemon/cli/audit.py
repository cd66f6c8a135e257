"""`cxrd audit verify | query | export`: the audit trail for compliance officers.

Each action is a function in `ACTIONS` (in `--help` order) that adds its own sub-parser. Every use of
the audit log is itself audited (event 110101 Audit Log Used), and query and export fail closed: when
the use cannot be recorded, nothing is shown.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from daemon.cli import studies, times
from daemon.cli.errors import CommandError
from daemon.runtime import Runtime

if TYPE_CHECKING:
    from daemon.cli.studies import StudyChoice
    from storage.audit_query import AuditFilter


def register_verify(actions) -> None:  # noqa: ANN001
    p = actions.add_parser("verify",
                           help="check the keyed hash chain; exit 1 naming the first changed, removed "
                                "or reordered row")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--expect-head", metavar="SEQ:HASH[@TIME]",
                   help="the `head` of an earlier good `--format json` run (kept elsewhere), or its "
                        "last_seq:last_hash: also detects rows removed from the end since then")
    p.set_defaults(func=run_verify)


def _filter_options() -> argparse.ArgumentParser:
    f = argparse.ArgumentParser(add_help=False)
    g = f.add_argument_group("filters")
    g.add_argument("--since", metavar="TIME", help=f"from this instant: {times.FORMS}")
    g.add_argument("--until", metavar="TIME", help="before this instant (exclusive; same forms as --since)")
    g.add_argument("--month", metavar="YYYY-MM", help="one calendar month in local time (instead of "
                   "--since/--until)")
    g.add_argument("--event", action="append", default=[], metavar="TYPE",
                   help="event type (association.rejected), family (association.*) or DICOM event id "
                        "(110113); repeatable")
    studies.add_options(g, what="events of this study")
    g.add_argument("--actor", metavar="WHO", help="exact actor (os:alice, aet:PACS1, cxrd:worker) or a "
                   "prefix ending in * (aet:*)")
    g.add_argument("--outcome", action="append", default=[], metavar="O",
                   help="0/4/8/12 or success/minor/serious/major/failure (= any non-zero); repeatable")
    return f


def register_query(actions) -> None:  # noqa: ANN001
    p = actions.add_parser("query", parents=[_filter_options()],
                           help="list audit events matching filters (oldest first, paged); audited")
    p.add_argument("--limit", type=int, default=100, help="events per page (default 100)")
    p.add_argument("--offset", type=int, default=0, help="skip this many matching events")
    p.add_argument("--after-seq", type=int, metavar="SEQ",
                   help="cursor: only events after this seq (the previous page's next_after_seq)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=run_query)


def register_export(actions) -> None:  # noqa: ANN001
    p = actions.add_parser("export", parents=[_filter_options()],
                           help="export events as DICOM PS3.15 A.5 audit messages (one XML message per "
                                "line), JSON lines or CSV; audited")
    p.add_argument("--format", choices=("dicom", "json", "csv"), default="dicom")
    p.add_argument("--output", metavar="FILE", help="write here (mode 0600) instead of standard output")
    p.set_defaults(func=run_export)


ACTIONS: list[Callable[[object], None]] = [register_verify, register_query, register_export]


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("audit", help="query, export and verify the tamper-evident audit trail")
    p.set_defaults(reads_dicom=False)
    actions = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    for add in ACTIONS:
        add(actions)


def run_verify(args: argparse.Namespace, rt: Runtime) -> int:
    from storage import chain_check
    head, anchored_at = _expected_head(args.expect_head) if args.expect_head else (None, None)
    with rt.read_sessions() as s:
        report, result = chain_check.verify(s, rt.keys.audit_key, rt.state_dir, expect_head=head,
                                            anchored_at=anchored_at)
    anchor = result["anchor"]
    rt.audit("audit.verify", outcome=0 if report.ok else 12, **result)
    if args.format == "json":
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0 if report.ok else 1
    if not report.ok:
        raise CommandError(f"audit chain broken at row {report.first_bad_seq}: {report.reason}")
    reached = f"; reaches the head anchored at {anchor['at']} (seq {anchor['seq']})" if anchor else ""
    print(f"cxrd: audit chain intact ({report.rows} rows, last seq {report.last_seq}{reached})")
    return 0


def _expected_head(text: str) -> tuple[tuple[int, str], str | None]:
    """SEQ:HASH or SEQ:HASH@TIME (the `head` of `audit verify --format json`) -> ((seq, hash), time)."""
    m = re.fullmatch(r"(\d+):([0-9a-f]{64})(?:@(\S+))?", text.strip())
    if not m:
        raise CommandError("--expect-head takes SEQ:HASH or SEQ:HASH@TIME (`head` from "
                           "`audit verify --format json`)", 2)
    at = None
    if m[3]:
        try:
            moment = datetime.fromisoformat(m[3])
        except ValueError:
            raise CommandError("--expect-head: TIME after @ must be an ISO 8601 time with its offset", 2) from None
        if moment.tzinfo is None:
            raise CommandError("--expect-head: TIME after @ must carry its offset (as `head` prints it)", 2)
        at = moment.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return (int(m[1]), m[2]), at


# -- query / export ------------------------------------------------------------------------------
def build_filter(args: argparse.Namespace, rt: Runtime) -> tuple[AuditFilter, StudyChoice]:
    """Command-line filters -> an AuditFilter on pseudonyms, plus the study as given (to audit)."""
    from storage import audit_query
    since, until = _time_window(args)
    try:
        events = tuple(audit_query.check_event_selector(e) for e in args.event)
        outcomes = audit_query.parse_outcomes(args.outcome)
    except audit_query.AuditQueryError as exc:  # a value the user typed: a usage error
        raise CommandError(f"{'--outcome' if 'outcome' in str(exc) else '--event'}: {exc}", 2) from None
    study = studies.resolve(rt, args.study, args.reason)
    flt = audit_query.AuditFilter(since=since, until=until, events=events, study_uid=study.pseudonym,
                                  actor=args.actor, outcomes=outcomes,
                                  after_seq=getattr(args, "after_seq", None), extra=study.extra)
    return flt, study


def _time_window(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """--month, or --since/--until, as the UTC ISO strings audit rows are compared with."""
    if args.month and (args.since or args.until):
        raise CommandError("give either --month or --since/--until, not both", 2)
    if args.month:
        first, after = times.month_bounds(args.month)
        return times.stored(first), times.stored(after)
    since = times.parse_time(args.since, "--since") if args.since else None
    until = times.parse_time(args.until, "--until") if args.until else None
    if since and until and since >= until:
        raise CommandError("--since must be before --until", 2)
    return (times.stored(since) if since else None), (times.stored(until) if until else None)


def _record(rt: Runtime, event_type: str, flt: AuditFilter, study: StudyChoice, **details) -> None:  # noqa: ANN003
    """Audit the use of the audit log (fail closed; see `studies.record_use`)."""
    studies.record_use(rt, event_type, study, filters=flt.as_details(), **details)


TABLE = (("seq", 7), ("occurred_at", 20), ("event_type", 22), ("outcome", 7), ("actor", 20),
         ("host", 15), ("study_uid", 44), ("details", 40))  # 44 = a whole 2.25 pseudonym


def _cell(ev: dict, name: str, width: int) -> str:
    v = ev.get(name, "")
    if name == "occurred_at":  # 2026-11-24T08:00:01.123456+00:00 -> 2026-11-24 08:00:01Z
        v = str(v)[:19].replace("T", " ") + "Z"
    if name == "details":
        v = json.dumps(v, sort_keys=True, separators=(",", ":")) if v else ""
    v = str(v)
    return v if len(v) <= width or name == "details" and width >= 999 else v[: width - 1] + "~"


def run_query(args: argparse.Namespace, rt: Runtime) -> int:
    from storage import audit_query
    if args.limit < 1 or args.limit > 100000 or args.offset < 0:
        raise CommandError("--limit must be 1..100000 and --offset not negative", 2)
    flt, use = build_filter(args, rt)
    with rt.read_sessions() as s:
        rows = audit_query.query(s, flt, limit=args.limit, offset=args.offset)
        more = len(rows) == args.limit and bool(
            audit_query.query(s, replace(flt, after_seq=rows[-1]["seq"]), limit=1))
    next_after = rows[-1]["seq"] if rows and more else None
    _record(rt, "audit.query", flt, use, returned=len(rows),
            limit=args.limit, offset=args.offset)
    if args.format == "json":
        json.dump({"events": rows, "returned": len(rows), "next_after_seq": next_after,
                   "filters": flt.as_details()}, sys.stdout, indent=2, sort_keys=True)
        print()
    elif args.format == "csv":
        from storage import audit_export
        audit_export.write_csv(rows, sys.stdout)
    else:
        _print_table(rows, next_after)
    return 0


def _print_table(rows: list[dict], next_after: int | None) -> None:
    print("  ".join(n.upper().ljust(w) for n, w in TABLE).rstrip())
    for ev in rows:
        print("  ".join(_cell(ev, n, w).ljust(w) for n, w in TABLE[:-1]) + "  " + _cell(ev, "details", 999))
    tail = f"; more: --after-seq {next_after}" if next_after else ""
    print(f"({len(rows)} events, times in UTC{tail})", file=sys.stderr)


def run_export(args: argparse.Namespace, rt: Runtime) -> int:
    from storage import audit_export
    flt, use = build_filter(args, rt)
    source_id = f"{rt.settings.dicom.ae_title}@{rt.hostname}"
    writers = {"dicom": lambda evs, out: audit_export.write_dicom(evs, out, source_id=source_id),
               "json": audit_export.write_json, "csv": audit_export.write_csv}
    write = writers[args.format]
    if args.output:
        target = Path(args.output)
        n = _export_to_file(rt, flt, use, args.format, write, target)
        print(f"cxrd: exported {n} events to {target}", file=sys.stderr)
    else:
        _export_to_stdout(rt, flt, use, args.format, write)
    return 0


def _export_to_file(rt: Runtime, flt: AuditFilter, use: StudyChoice, fmt: str, write: Callable, target: Path) -> int:
    """Write beside the target (mode 0600), fsync, audit, then rename: a reader never sees a partial
    export, and an export whose use could not be recorded never appears."""
    from storage import audit_query
    tmp = target.with_name(f".{target.name}.part")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise CommandError(f"cannot write {target}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out, rt.read_sessions() as s:
            n = write(audit_query.iter_events(s, flt), out)
            out.flush()
            os.fsync(out.fileno())
        _record(rt, "audit.export", flt, use, format=fmt, exported=n, output=target.name)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def _export_to_stdout(rt: Runtime, flt: AuditFilter, use: StudyChoice, fmt: str, write: Callable) -> None:
    """Record the export first (output cannot be taken back), pinned to the rows present now, so the
    export event itself is not exported and the recorded count is what is written."""
    from storage import audit_query
    with rt.read_sessions() as s:
        flt = replace(flt, upto_seq=audit_query.head_seq(s))
        n = audit_query.count(s, flt)
    _record(rt, "audit.export", flt, use, format=fmt, exported=n, output="stdout")
    with rt.read_sessions() as s:
        write(audit_query.iter_events(s, flt), sys.stdout)
