"""`cxrd reidentify --reason TEXT (--study UID | --instance UID)`: break-glass lookup of original identifiers.

Prints the original identifiers behind a pseudonymous study or instance. Refused without a non-empty
reason. Every attempt - granted, refused or finding nothing - is audited (110110 Patient Record, with
the reason) and committed before anything is printed.
"""
from __future__ import annotations

import argparse
import json
import sys

from daemon.cli.errors import CommandError
from daemon.runtime import Runtime
from storage.errors import ReidError, TamperError

COLUMNS = ("pseudo_sop_instance_uid", "study_uid", "series_uid", "sop_instance_uid", "accession_number",
           "patient_id", "issuer_of_patient_id", "patient_name", "study_date")


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("reidentify", help="break-glass: print the original identifiers of a pseudonymous "
                                          "study or instance (requires --reason; audited)")
    p.add_argument("--reason", required=True, help="why (ticket, clinician request); stored in the audit trail")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="PSEUDO_UID", help="pseudonymous Study Instance UID (2.25...)")
    which.add_argument("--instance", metavar="PSEUDO_UID", help="pseudonymous SOP Instance UID (2.25...)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run_reidentify, reads_dicom=False)


def run_reidentify(args: argparse.Namespace, rt: Runtime) -> int:
    from storage import reid
    keys = rt.keys
    with rt.sessions() as s:
        try:
            rows = reid.reidentify(s, keys.reid_key, keys.audit_key, reason=args.reason, actor=rt.actor,
                                   host=rt.hostname, study=args.study, instance=args.instance)
        except (ReidError, TamperError) as exc:
            s.commit()  # keep the refusal / security alert in the audit trail
            raise CommandError(str(exc), 2 if isinstance(exc, ReidError) else 1) from None  # no reason: usage
        s.commit()
    if not rows:
        raise CommandError("no re-identification entry for that " + ("study" if args.study else "instance"))
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    for row in rows:
        for col in COLUMNS:
            print(f"{col:24} {row.get(col, '')}")
        print()
    return 0
