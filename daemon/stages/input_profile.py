"""The worker's side of input monitoring: profile each image while preprocessing it, store the
profiles with its predictions.

`preprocess` replaces the worker's `model.preprocess(data)` and returns the same tensor, plus the
image's characteristics measured on the pixels just decoded (`cxrmodel.input_profile`: a strided
subsample, vectorised, no second decode). `record` writes them in the worker's prediction
transaction, one statement per batch, so a profile exists exactly when the image was predicted and
a batch replayed after a crash writes none twice. The view is the view rule's, read with the claim.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import Connection, insert, select

from cxrmodel.input_profile import preprocess_profiled
from cxrmodel.registry import LoadedModel
from storage.models import InputProfile

COLUMNS = frozenset(c.name for c in InputProfile.__table__.columns) - {"instance_id", "model_version",
                                                                      "measured_at", "view"}


def preprocess(model: LoadedModel, data: bytes) -> tuple[Any, dict[str, Any] | None]:
    """(the model's input tensor, the image's profile or None)."""
    return preprocess_profiled(data, model.manifest.preprocessing)


def record(conn: Connection, profiles: Sequence[tuple[int, dict[str, Any] | None, str]], model_version: str,
           now: datetime) -> int:
    """Insert the profiles (instance id, profile, view) of instances that have none yet; returns how
    many were written."""
    wanted = {iid: (prof, view) for iid, prof, view in profiles if prof}
    if not wanted:
        return 0
    have = set(conn.scalars(select(InputProfile.instance_id).where(InputProfile.instance_id.in_(wanted))))
    rows = []
    for iid, (prof, view) in wanted.items():
        if iid in have:
            continue
        row = {k: prof.get(k) for k in COLUMNS}
        for k in ("manufacturer", "model_name", "photometric"):
            row[k] = str(row.get(k) or "")[:64 if k != "photometric" else 16]
        row["rows"], row["columns"] = int(row.get("rows") or 0), int(row.get("columns") or 0)
        rows.append({**row, "instance_id": iid, "model_version": model_version, "measured_at": now,
                     "view": str(view or "")[:16]})
    if rows:
        conn.execute(insert(InputProfile.__table__), rows)
    return len(rows)
