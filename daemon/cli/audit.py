"""`cxrd audit verify | query | export`: the audit trail for compliance officers.

Each action is a function in `ACTIONS` that adds its own sub-parser, so `query` and `export` can be
added (here or from another module: `ACTIONS.append(register_query)`) without touching the others.
Every use of the audit log is itself audited (event 110101 Audit Log Used).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

from daemon.cli.errors import CommandError
from daemon.runtime import Runtime
from storage import audit, audit_export, audit_query
from storage.errors import AuditError


def common_options() -> argparse.ArgumentParser:
    """Options every audit action takes after its name (`--config`)."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="TOML settings file")
    return c


def register_verify(actions) -> None:  # noqa: ANN001
    p = actions.add_parser("verify", parents=[common_options()],
                           help="check the keyed hash chain; exit 1 naming the first changed, removed "
                                "or reordered row")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--expect-head", metavar="SEQ:HASH",
                   help="last_seq:last_hash of an earlier good run (kept elsewhere): also detects rows "
                        "removed from the end since then")
    p.set_defaults(func=run_verify)


def _filter_options() -> argparse.ArgumentParser:
    f = argparse.ArgumentParser(add_help=False)
    g = f.add_argument_group("filters")
    g.add_argument("--since", metavar="TIME", help="from this instant (ISO 8601, or a local date/time "
                   "such as 2026-11-24 or '2026-11-24 08:00', or now/today/yesterday)")
    g.add_argument("--until", metavar="TIME", help="before this instant (exclusive; same forms as --since)")
    g.add_argument("--month", metavar="YYYY-MM", help="one calendar month in local time (instead of "
                   "--since/--until)")
    g.add_argument("--event", action="append", default=[], metavar="TYPE",
                   help="event type (association.rejected), family (association.*) or DICOM event id "
                        "(110113); repeatable")
    g.add_argument("--study", metavar="UID", help="pseudonymous Study Instance UID; with --reason, an "
                   "ORIGINAL Study Instance UID (mapped to its pseudonym; the use is audited)")
    g.add_argument("--reason", metavar="TEXT", help="why an original identifier is used (ticket, request)")
    g.add_argument("--actor", metavar="WHO", help="exact actor (os:alice, aet:PACS1, cxrd:worker) or a "
                   "prefix ending in * (aet:*)")
    g.add_argument("--outcome", action="append", default=[], metavar="O",
                   help="0/4/8/12 or success/minor/serious/major/failure (= any non-zero); repeatable")
    return f


def register_query(actions) -> None:  # noqa: ANN001
    p = actions.add_parser("query", parents=[common_options(), _filter_options()],
                           help="list audit events matching filters (oldest first, paged); audited")
    p.add_argument("--limit", type=int, default=100, help="events per page (default 100)")
    p.add_argument("--offset", type=int, default=0, help="skip this many matching events")
    p.add_argument("--after-seq", type=int, metavar="SEQ",
                   help="cursor: only events after this seq (the previous page's next_after_seq)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=run_query)


def register_export(actions) -> None:  # noqa: ANN001
    p = actions.add_parser("export", parents=[common_options(), _filter_options()],
                           help="export events as DICOM PS3.15 A.5 audit messages (one XML message per "
                                "line), JSON lines or CSV; audited")
    p.add_argument("--format", choices=("dicom", "json", "csv"), default="dicom")
    p.add_argument("--output", metavar="FILE", help="write here (mode 0600) instead of standard output")
    p.set_defaults(func=run_export)


ACTIONS: list[Callable[[object], None]] = [register_verify, register_query, register_export]


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("audit", help="query, export and verify the tamper-evident audit trail")
    actions = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    for add in ACTIONS:
        add(actions)


def record_use(rt: Runtime, event_type: str, outcome: int, details: dict) -> None:
    """Audit a use of the audit log (in its own committed transaction)."""
    with rt.sessions.begin() as s:
        audit.append(s, rt.keys.audit_key, event_type=event_type, outcome=outcome, actor=rt.actor,
                     host=rt.hostname, details=details)


def run_verify(args: argparse.Namespace, rt: Runtime) -> int:
    key = rt.keys.audit_key
    head = None
    if args.expect_head:
        m = re.fullmatch(r"(\d+):([0-9a-f]{64})", args.expect_head.strip())
        if not m:
            raise CommandError("--expect-head takes SEQ:HASH (last_seq:last_hash from `audit verify --format json`)", 2)
        head = (int(m[1]), m[2])
    with rt.read_sessions() as s:
        report = audit.verify(s, key, expect_head=head)
    record_use(rt, "audit.verify", 0 if report.ok else 12, report.as_dict())
    if args.format == "json":
        json.dump(report.as_dict(), sys.stdout, indent=2)
        print()
        return 0 if report.ok else 1
    if not report.ok:
        raise CommandError(f"audit chain broken at row {report.first_bad_seq}: {report.reason}")
    print(f"cxrd: audit chain intact ({report.rows} rows, last seq {report.last_seq})")
    return 0


# -- query / export ------------------------------------------------------------------------------
def build_filter(args: argparse.Namespace, rt: Runtime) -> tuple[audit_query.AuditFilter, dict]:
    """Command-line filters -> an AuditFilter on pseudonyms, plus what must be audited about them.

    An original Study UID (given with --reason) is mapped with the keyed pseudonym function, the same
    one de-identification used, so the reid map is never opened; only the pseudonym is recorded.
    """
    if args.month and (args.since or args.until):
        raise CommandError("give either --month or --since/--until, not both", 2)
    if args.month:
        since, until = audit_query.month_bounds(args.month)
    else:
        since = audit_query.parse_time(args.since) if args.since else None
        until = audit_query.parse_time(args.until) if args.until else None
    if since and until and since >= until:
        raise CommandError("--since must be before --until", 2)
    events = tuple(audit_query.check_event_selector(e) for e in args.event)
    outcomes = audit_query.parse_outcomes(args.outcome)
    reason = (args.reason or "").strip()
    study, extra, original = args.study, {}, None
    if study is not None:
        study = study.strip()
        if not study:
            raise CommandError("--study needs a UID", 2)
    if reason and study is None:
        raise CommandError("--reason is only used with --study (an original Study Instance UID)", 2)
    if study and not reason and not re.fullmatch(r"2\.25\.[1-9][0-9]{0,38}", study):
        # refuse rather than search (and record) what is probably an original identifier
        raise CommandError("--study without --reason takes a pseudonymous UID (2.25.…); for an original "
                           "Study Instance UID add --reason", 2)
    if study and reason:
        from storage.deid import pseudonymize_uid
        original = study
        study = pseudonymize_uid(rt.keys.uid_key, original)
        extra = {"study_given_as": "original", "reason": reason[:500]}
    after = getattr(args, "after_seq", None)
    flt = audit_query.AuditFilter(since=since, until=until, events=events, study_uid=study,
                                  actor=args.actor, outcomes=outcomes, after_seq=after, extra=extra)
    return flt, {"original": original is not None, "reason": reason}


def _record(rt: Runtime, event_type: str, flt: audit_query.AuditFilter, uses_original: bool,
            reason: str, **details) -> None:  # noqa: ANN003
    """Audit the use in one committed transaction; an original identifier also gets its own
    `reid.pseudonymize` event (who, why), as a break-glass lookup would."""
    try:
        with rt.sessions.begin() as s:
            if uses_original:
                audit.append(s, rt.keys.audit_key, event_type="reid.pseudonymize", actor=rt.actor,
                             host=rt.hostname, study_uid=flt.study_uid or "",
                             details={"reason": reason[:500], "via": event_type})
            audit.append(s, rt.keys.audit_key, event_type=event_type, actor=rt.actor, host=rt.hostname,
                         study_uid=flt.study_uid or "", details={"filters": flt.as_details(), **details})
    except AuditError:
        raise
    except Exception as exc:  # fail closed: no audit row, no output
        raise CommandError(f"cannot record this use of the audit log ({event_type}: {type(exc).__name__}); "
                           "nothing was shown. Run it with the service's own database account.") from None


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
    if args.limit < 1 or args.limit > 100000 or args.offset < 0:
        raise CommandError("--limit must be 1..100000 and --offset not negative", 2)
    flt, use = build_filter(args, rt)
    with rt.read_sessions() as s:
        rows = audit_query.query(s, flt, limit=args.limit, offset=args.offset)
        more = len(rows) == args.limit and bool(
            audit_query.query(s, replace(flt, after_seq=rows[-1]["seq"]), limit=1))
    next_after = rows[-1]["seq"] if rows and more else None
    _record(rt, "audit.query", flt, use["original"], use["reason"], returned=len(rows),
            limit=args.limit, offset=args.offset)
    if args.format == "json":
        json.dump({"events": rows, "returned": len(rows), "next_after_seq": next_after,
                   "filters": flt.as_details()}, sys.stdout, indent=2, sort_keys=True)
        print()
    elif args.format == "csv":
        audit_export.write_csv(rows, sys.stdout)
    else:
        print("  ".join(n.upper().ljust(w) for n, w in TABLE).rstrip())
        for ev in rows:
            print("  ".join(_cell(ev, n, w).ljust(w) for n, w in TABLE[:-1]) + "  " + _cell(ev, "details", 999))
        tail = f"; more: --after-seq {next_after}" if next_after else ""
        print(f"({len(rows)} events, times in UTC{tail})", file=sys.stderr)
    return 0


def run_export(args: argparse.Namespace, rt: Runtime) -> int:
    flt, use = build_filter(args, rt)
    source_id = f"{rt.settings.dicom.ae_title}@{rt.hostname}"
    writers = {"dicom": lambda evs, out: audit_export.write_dicom(evs, out, source_id=source_id),
               "json": audit_export.write_json, "csv": audit_export.write_csv}
    write = writers[args.format]
    if args.output:
        target = Path(args.output)
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
            _record(rt, "audit.export", flt, use["original"], use["reason"], format=args.format,
                    exported=n, output=target.name)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        print(f"cxrd: exported {n} events to {target}", file=sys.stderr)
        return 0
    # standard output: the export is recorded first, so a failure to audit shows nothing
    with rt.read_sessions() as s:
        flt = replace(flt, upto_seq=audit_query.head_seq(s))  # the export event itself is not exported
        n = audit_query.count(s, flt)
    _record(rt, "audit.export", flt, use["original"], use["reason"], format=args.format, exported=n,
            output="stdout")
    with rt.read_sessions() as s:
        write(audit_query.iter_events(s, flt), sys.stdout)
    return 0
