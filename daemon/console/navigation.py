"""The console's menu: (role, path, title) entries; a person sees only their own role's entries, in
this order, and `/` sends them to the first one. Pages still check the role themselves
(`access.requires_role`): the menu only hides links, it protects nothing."""
from __future__ import annotations

NAVIGATION: list[tuple[str, str, str]] = [
    ("compliance", "/audit", "Audit trail"),
    ("operations", "/operations", "Service"),
    ("operations", "/models", "Models"),
    ("operations", "/watch", "Model watch"),
    ("admin", "/accounts", "Accounts"),
    ("admin", "/models", "Models"),
    ("admin", "/watch", "Model watch"),
]


def entries_for(role: str) -> list[tuple[str, str]]:
    """(path, title) of the menu entries for `role`."""
    return [(path, title) for r, path, title in NAVIGATION if r == role]


def home_for(role: str) -> str:
    entries = entries_for(role)
    return entries[0][0] if entries else "/signin"
