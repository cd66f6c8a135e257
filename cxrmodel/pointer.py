"""Which model version is current, read without importing torch.

`Registry` owns the model directory and needs torch to load weights; `cxrd status` and the like only
need the pointer and two fields of one manifest, and should not pay for torch to show them. Both read
the pointer through `read_pointer`, so its format is defined in one place.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ModelError

CURRENT = "current.json"


def read_pointer(models_dir: str | Path) -> dict[str, Any]:
    """`{"version": name or None, "previous": [names]}`; no pointer file means no model is current."""
    p = Path(models_dir) / CURRENT
    if not p.exists():
        return {"version": None, "previous": []}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"model pointer {CURRENT} is unreadable ({type(exc).__name__})") from None
    return {"version": data.get("version"), "previous": list(data.get("previous", []))}


def current_summary(models_dir: str | Path) -> dict[str, str] | None:
    """Version, creation time and source format of the current model, as its manifest records them.

    None when no model is current or the pointer names a version that is not on disk (as
    `Registry.current()` does); the weights are not touched, so nothing here is verified.
    """
    version = read_pointer(models_dir)["version"]
    if not version or Path(version).name != version:
        return None
    manifest = Path(models_dir) / version / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"manifest of {version} is unreadable ({type(exc).__name__})") from None
    source = data.get("source") or {}
    return {"version": str(data.get("version") or version), "created": str(data.get("created", "")),
            "source": str(source.get("format", "")) if isinstance(source, dict) else ""}
