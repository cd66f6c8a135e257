"""`cxrd users add | list | disable | enable | reset-password | set-role`: the web console's local
accounts, every change audited with the person running the command as actor.

Passwords are read from a prompt (typed twice) or, when stdin is not a terminal, from its first line,
never from the command line (which other users can read in the process list and shell history).
"""
from __future__ import annotations

import argparse
import json
import sys

from config.loader import CONSOLE_ROLES as ROLES
from daemon.cli.errors import CommandError
from daemon.runtime import Runtime


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("users", help="web console accounts: add, list, disable, reset a password, set a role")
    p.set_defaults(reads_dicom=False)
    actions = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    a = actions.add_parser("add", help="add an account (password from a prompt or the first line of stdin)")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--role", choices=ROLES, required=True, help="the account's one role")
    a.set_defaults(func=run_add)
    a = actions.add_parser("list", help="accounts, their roles and states")
    a.add_argument("--format", choices=("table", "json"), default="table")
    a.set_defaults(func=run_list)
    a = actions.add_parser("disable", help="stop an account signing in; its open sessions end")
    a.add_argument("name", metavar="NAME")
    a.set_defaults(func=run_disable)
    a = actions.add_parser("enable", help="let a disabled account sign in again")
    a.add_argument("name", metavar="NAME")
    a.set_defaults(func=run_enable)
    a = actions.add_parser("reset-password",
                           help="set a new password (prompt or stdin); the account's open sessions end")
    a.add_argument("name", metavar="NAME")
    a.set_defaults(func=run_reset_password)
    a = actions.add_parser("set-role", help="give an account another role; its open sessions end")
    a.add_argument("name", metavar="NAME")
    a.add_argument("role", metavar="ROLE", choices=ROLES)
    a.set_defaults(func=run_set_role)


def read_password(min_length: int) -> str:
    """Twice from a terminal prompt, or the first line of a non-terminal stdin."""
    import getpass
    if sys.stdin is not None and sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Same password again: ") != first:
            raise CommandError("the two passwords typed differ; nothing changed")
        password = first
    else:
        line = sys.stdin.readline(4096) if sys.stdin is not None else ""
        password = line.rstrip("\r\n")
    if len(password) < min_length:
        raise CommandError(f"a password must be at least {min_length} characters (console.min_password_length); "
                           "nothing changed")
    return password


def _change(rt: Runtime, event_type: str, change, name: str, **details: object) -> None:  # noqa: ANN001
    """Run `change(session)` and its audit row in one transaction; refused changes become one line."""
    from storage import accounts
    try:
        with rt.sessions() as s, s.begin():
            extra = change(s) or {}
            accounts.audited(s, rt.keys.audit_key, event_type, actor=rt.actor, host=rt.hostname, user=name,
                             **details, **extra)
    except accounts.AccountError as exc:
        raise CommandError(f"{exc}; nothing changed") from None


def run_add(args: argparse.Namespace, rt: Runtime) -> int:
    from storage import accounts
    c = rt.settings.console
    try:
        accounts.check_name(args.name)
    except accounts.AccountError as exc:
        raise CommandError(str(exc), 2) from None
    with rt.read_sessions() as s:
        if accounts.get(s, args.name) is not None:
            raise CommandError(f"a console account named {args.name!r} already exists; nothing changed")
    password_hash = _hash(read_password(c.min_password_length), c.min_password_length)
    _change(rt, "users.added", lambda s: accounts.add(s, args.name, args.role, password_hash) and None,
            args.name, role=args.role)
    print(f"cxrd: console account {args.name} added with the {args.role} role")
    return 0


def _hash(password: str, min_length: int) -> str:
    from storage import accounts
    try:
        return accounts.hash_password(password, min_length)
    except accounts.AccountError as exc:
        raise CommandError(f"{exc}; nothing changed") from None


def run_list(args: argparse.Namespace, rt: Runtime) -> int:
    from storage import accounts
    with rt.read_sessions() as s:
        rows = accounts.listing(s)
    rt.audit("users.listed", accounts=len(rows))
    if args.format == "json":
        json.dump([{"name": a.name, "role": a.role, "disabled": a.disabled,
                    "created_at": a.created_at.isoformat(timespec="seconds"),
                    "password_changed_at": a.password_changed_at.isoformat(timespec="seconds")} for a in rows],
                  sys.stdout, indent=2)
        print()
        return 0
    if not rows:
        print("no console accounts (add one: cxrd users add NAME --role admin)")
        return 0
    width = max(4, *(len(a.name) for a in rows))
    print(f"{'NAME':<{width}}  {'ROLE':<10}  {'STATE':<8}  PASSWORD CHANGED (UTC)")
    for a in rows:
        print(f"{a.name:<{width}}  {a.role:<10}  {'disabled' if a.disabled else 'active':<8}  "
              f"{a.password_changed_at.strftime('%Y-%m-%d %H:%M')}")
    return 0


def run_disable(args: argparse.Namespace, rt: Runtime) -> int:
    from storage import accounts
    _change(rt, "users.disabled", lambda s: accounts.set_disabled(s, args.name, True) and None, args.name)
    print(f"cxrd: console account {args.name} disabled; its open sessions ended")
    return 0


def run_enable(args: argparse.Namespace, rt: Runtime) -> int:
    from storage import accounts
    _change(rt, "users.enabled", lambda s: accounts.set_disabled(s, args.name, False) and None, args.name)
    print(f"cxrd: console account {args.name} enabled")
    return 0


def run_reset_password(args: argparse.Namespace, rt: Runtime) -> int:
    from storage import accounts
    with rt.read_sessions() as s:
        if accounts.get(s, args.name) is None:
            raise CommandError(f"no console account named {args.name[:64]!r}; nothing changed")
    c = rt.settings.console
    password_hash = _hash(read_password(c.min_password_length), c.min_password_length)
    _change(rt, "users.password_reset", lambda s: accounts.set_password(s, args.name, password_hash) and None,
            args.name)
    print(f"cxrd: password of console account {args.name} reset; its open sessions ended")
    return 0


def run_set_role(args: argparse.Namespace, rt: Runtime) -> int:
    from storage import accounts

    def change(s):  # noqa: ANN001, ANN202
        _, before = accounts.set_role(s, args.name, args.role)
        return {"previous_role": before}
    _change(rt, "users.role_set", change, args.name, role=args.role)
    print(f"cxrd: console account {args.name} now has the {args.role} role; its open sessions ended")
    return 0
