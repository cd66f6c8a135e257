"""Operations pages: the service's live state, failures, results, disk and database health. Built by
the console-ops slice; every route requires the operations role."""
from __future__ import annotations

routes: list = []
