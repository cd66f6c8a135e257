"""Which model version runs in shadow beside the current one, read without importing torch.

`{models_dir}/shadow.json` holds at most one version, who chose it (`admin` for `cxrd model shadow`,
`console:NAME` for the web console, `retrain:<run>` for scheduled retraining; with no version, why
the last one stopped) and when.
`Registry.set_shadow` writes it atomically under the registry lock, like `current.json`; the worker
and `cxrd retrain --list` only read it. The choice lives beside the models, not in the
configuration, so it survives restarts and a `cxrd model shadow --off` needs no configuration edit.
No file, or `"version": null`, means no shadow.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ModelError

SHADOW = "shadow.json"


def read_shadow(models_dir: str | Path) -> dict[str, Any]:
    """`{"version": name or None, "origin": str, "since": iso time}`."""
    p = Path(models_dir) / SHADOW
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": None, "origin": "", "since": ""}
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"shadow pointer {SHADOW} is unreadable ({type(exc).__name__})") from None
    version = data.get("version") if isinstance(data, dict) else None
    if version is not None and (not isinstance(version, str) or Path(version).name != version):
        raise ModelError(f"shadow pointer {SHADOW} names no valid version")
    return {"version": version, "origin": str(data.get("origin", "")), "since": str(data.get("since", ""))}


def stamp(models_dir: str | Path) -> tuple[int, int, int] | None:
    """What changes whenever the pointer is rewritten (an atomic replace is a new inode); None when
    there is no pointer. One stat: the worker's per-batch check costs no read and no parse."""
    try:
        st = os.stat(Path(models_dir) / SHADOW)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
