"""The operations dashboard's data: the database aggregates of `ops_queries` plus disk, database health,
the current model and the key-encryption keys, gathered in one call.

The database being down is a state to show, not an error page: every section that needs it is
replaced by the one-line reason, and disk, keys and model (read from files) are still shown. Keys
are described by id, state and age only (`Keyring.describe`, which never returns key material);
the per-KEK object counts of `cxrd keys list` read every vault object's header, too slow for a page
that must load in well under a second, so the page points to that command instead.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from daemon.console import ops_queries as Q
from daemon.runtime import Runtime


@dataclass
class Dashboard:
    now: datetime
    hours: int
    database: dict[str, Any]
    disk: dict[str, Any]
    keys: list[dict[str, Any]] | str
    model: dict[str, str] | None
    states: dict[str, int] = field(default_factory=dict)
    not_stored: dict[str, int] = field(default_factory=dict)
    queue: dict[str, Any] = field(default_factory=dict)
    hourly: list[Q.HourBucket] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    associations: list[Q.AeCounts] = field(default_factory=list)
    vault: dict[str, int] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)


def collect(rt: Runtime, hours: int = 24, now: datetime | None = None) -> Dashboard:
    from storage import db
    from storage.errors import DatabaseUnavailable
    now = now or datetime.now(timezone.utc)
    hours = max(1, min(int(hours), Q.MAX_HOURS))
    board = Dashboard(now=now, hours=hours, database=_database_head(rt), disk=disk(rt), keys=keys(rt),
                      model=_model(rt))
    try:
        with db.reachable(rt.engine), rt.read_sessions() as s:
            board.states = Q.images_by_state(s)
            board.not_stored = Q.not_stored(s)
            board.queue = Q.queue(s, now)
            board.hourly = Q.hourly(s, now, hours)
            board.failures = Q.recent_failures(s)
            board.results = Q.results_summary(s)
            board.associations = Q.associations(s, Q.hour_floor(now) - timedelta(hours=hours - 1))
            board.vault = Q.vault_size(s)
            board.audit = Q.audit_head(s)
            board.database["size_bytes"] = Q.database_size(s)
        board.database["reachable"] = True
    except DatabaseUnavailable as exc:
        board.database.update(reachable=False, error=str(exc))
    if board.database.get("reachable"):
        try:
            board.database["revision"] = db.schema_revision(rt.engine)
            board.database["head"] = db.head_revision()
        except DatabaseUnavailable as exc:
            board.database.update(reachable=False, error=str(exc))
    return board


def _database_head(rt: Runtime) -> dict[str, Any]:
    url = rt.engine.url
    return {"backend": url.get_backend_name(), "url": url.render_as_string(hide_password=True),
            "reachable": False, "revision": None, "head": None, "size_bytes": None}


def disk(rt: Runtime) -> dict[str, Any]:
    """Free space where the state (vault, SQLite database) lives, against the floor below which
    ingest refuses new images (`storage.min_free_mb`)."""
    floor = int(rt.settings.storage.min_free_mb) * 1024 * 1024
    try:
        usage = shutil.disk_usage(rt.state_dir)
    except OSError as exc:
        return {"error": f"{rt.state_dir}: {exc.strerror or type(exc).__name__}", "floor_bytes": floor}
    return {"path": str(rt.state_dir), "free_bytes": usage.free, "total_bytes": usage.total,
            "used_fraction": (usage.total - usage.free) / usage.total if usage.total else 0.0,
            "floor_bytes": floor, "below_floor": usage.free < floor}


def keys(rt: Runtime) -> list[dict[str, Any]] | str:
    """KEK ids, state, which is primary and their ages; a one-line reason if the keyring cannot be read."""
    try:
        described = rt.keys.keyring.describe()
    except Exception as exc:  # noqa: BLE001 - a missing or damaged keyring is shown, not raised
        return f"keyring unreadable ({type(exc).__name__}: {str(exc)[:200]})"
    now = datetime.now(timezone.utc)
    out = []
    for k in described:
        age = None
        try:
            created = datetime.fromisoformat(str(k.get("created") or ""))
            if created.tzinfo is None:
                created = created.replace(tzinfo=timezone.utc)
            age = max((now - created).days, 0)
        except ValueError:
            pass
        out.append({"id": str(k["id"]), "state": str(k["state"]), "primary": bool(k["primary"]),
                    "created": str(k.get("created") or ""), "retired": str(k.get("retired") or ""),
                    "age_days": age})
    return out


def _model(rt: Runtime) -> dict[str, str] | None:
    from cxrmodel.pointer import current_summary
    try:
        return current_summary(rt.models_dir)
    except Exception as exc:  # noqa: BLE001 - an unreadable pointer is shown as such
        return {"version": "", "created": "", "source": "", "error": str(exc)[:200]}
