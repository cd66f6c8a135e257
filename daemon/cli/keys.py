"""`cxrd keys list | rotate | rewrap | retire KEK_ID`: key-encryption-key life cycle, every change audited.

Rotation adds a new primary KEK and re-wraps every vault object's data key under it (payloads are
not rewritten); pseudonym, date, audit and re-identification keys are derived from the master key
and never change, so linkage and the audit chain survive. An old KEK can be retired (its material
shredded from the keyring) only once no object uses it any more.
"""
from __future__ import annotations

import argparse
import json
import sys

from daemon.cli.errors import CommandError
from daemon.runtime import Runtime
from storage.errors import KeyringError


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("keys", help="list, rotate or retire key-encryption keys (KEKs)")
    p.set_defaults(reads_dicom=False)
    actions = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    a = actions.add_parser("list", help="KEKs, which is primary, how many objects each wraps")
    a.add_argument("--format", choices=("table", "json"), default="table")
    a.set_defaults(func=run_list)
    a = actions.add_parser("rotate",
                           help="create a new primary KEK and re-wrap every object's data key under it")
    a.add_argument("--format", choices=("table", "json"), default="table")
    a.set_defaults(func=run_rotate)
    a = actions.add_parser("rewrap",
                           help="re-wrap objects still under an older KEK with the current primary "
                                "(e.g. written by a running daemon during a rotation)")
    a.add_argument("--format", choices=("table", "json"), default="table")
    a.set_defaults(func=run_rewrap)
    a = actions.add_parser("retire",
                           help="shred an old KEK; refused while it is primary or any object uses it")
    a.add_argument("kek_id", metavar="KEK_ID")
    a.add_argument("--format", choices=("table", "json"), default="table")
    a.set_defaults(func=run_retire)


def _emit(args: argparse.Namespace, payload: dict, line: str) -> None:
    if args.format == "json":
        json.dump(payload, sys.stdout, indent=2)
        print()
    else:
        print(line)


def _rewrap(rt: Runtime, target: str) -> tuple[int, list[str]]:
    from storage import audit
    failed: list[str] = []

    def tampered(object_id: str, exc: Exception) -> None:
        failed.append(object_id)
        with rt.sessions.begin() as s:
            audit.record_tamper(s, rt.keys.audit_key, exc, what="vault", actor=rt.actor, host=rt.hostname)

    return rt.vault.rewrap(target, on_error=tampered), failed


def run_list(args: argparse.Namespace, rt: Runtime) -> int:
    usage = rt.vault.kek_usage()
    keks = [dict(k, objects=usage.get(k["id"], 0)) for k in rt.keys.keyring.describe()]
    unknown = {kid: n for kid, n in usage.items() if kid not in {k["id"] for k in keks}}
    if args.format == "json":
        json.dump({"keks": keks, "objects_under_unknown_keks": unknown}, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'KEK':16}  {'STATE':8}  {'PRIMARY':7}  {'OBJECTS':>8}  CREATED")
    for k in keks:
        print(f"{k['id']:16}  {k['state']:8}  {'yes' if k['primary'] else '':7}  {k['objects']:>8}  {k['created']}")
    return 0


def run_rotate(args: argparse.Namespace, rt: Runtime) -> int:
    keyring = rt.keys.keyring
    old = keyring.primary_id
    new = keyring.rotate()
    count, failed = _rewrap(rt, new)
    rt.audit("keys.rotated", outcome=0 if not failed else 8, old_primary=old, new_primary=new,
             rewrapped=count, failed=len(failed))
    _emit(args, {"old_primary": old, "new_primary": new, "rewrapped": count, "failed": failed},
          f"cxrd: new primary KEK {new} (was {old}); re-wrapped {count} object(s)")
    if failed:
        raise CommandError(f"{len(failed)} object(s) failed their integrity check and were not re-wrapped "
                           f"(first: {failed[0]}); audited as security alerts")
    return 0


def run_rewrap(args: argparse.Namespace, rt: Runtime) -> int:
    target = rt.keys.keyring.primary_id
    count, failed = _rewrap(rt, target)
    rt.audit("keys.rotated", outcome=0 if not failed else 8, primary=target, rewrapped=count,
             failed=len(failed), rewrap_only=True)
    _emit(args, {"primary": target, "rewrapped": count, "failed": failed},
          f"cxrd: re-wrapped {count} object(s) under KEK {target}")
    if failed:
        raise CommandError(f"{len(failed)} object(s) failed their integrity check (first: {failed[0]})")
    return 0


def run_retire(args: argparse.Namespace, rt: Runtime) -> int:
    in_use = rt.vault.kek_usage().get(args.kek_id, 0)
    try:
        rt.keys.keyring.retire(args.kek_id, in_use)
    except KeyringError as exc:
        rt.audit("keys.retired", outcome=4, kek=args.kek_id, refused=str(exc))
        raise CommandError(str(exc)) from None
    rt.audit("keys.retired", outcome=0, kek=args.kek_id)
    _emit(args, {"retired": args.kek_id}, f"cxrd: KEK {args.kek_id} retired and shredded")
    return 0
