"""Compliance pages: the audit trail (search, event detail, chain state, downloads). Built by the
console-audit slice; every route requires the compliance role."""
from __future__ import annotations

routes: list = []
