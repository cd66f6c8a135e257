"""What the model pages show: versions and their evaluations, the promotion history, retraining runs.

Read without torch: manifests and the registry's pointer and history are JSON files the console
parses itself (as `cxrmodel.pointer` does for `cxrd status`), so viewing the pages never loads a
model. Only a promotion (daemon.stages.model_changes) loads the weights, to verify them. A manifest
is data from disk: it is parsed as JSON, bounded in size, and every field is checked for its type
before it is shown; a damaged one is listed with its error, never raised.

Who promoted or rolled back, and when, is the audit trail's (`model.promoted`, `model.rollback`,
`model.rejected`: actor, time, client address for the console); the registry's own
`history.jsonl` records what the pointer did, without the person, and is shown beside it.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrmodel.labels import LABELS
from storage.models import RetrainRun

# cxrmodel.registry.HISTORY, named here because importing the registry imports torch
# (tests/daemon/console/test_console_ops_models.py holds the two equal).
HISTORY = "history.jsonl"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_HISTORY_LINES = 200


@dataclass
class Finding:
    label: str
    auroc: float | None
    ci: tuple[float, float] | None
    positives: int | None
    accuracy: float | None
    roc: tuple[list[float], list[float]] | None


@dataclass
class Version:
    version: str
    created: str = ""
    source: str = ""
    current: bool = False
    weights_sha256: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def mean_auroc(self) -> float | None:
        return _number(self.metrics.get("mean_auroc"))

    @property
    def mean_auroc_ci(self) -> tuple[float, float] | None:
        return _pair(self.metrics.get("mean_auroc_ci95"))

    @property
    def evaluated(self) -> bool:
        return isinstance(self.metrics.get("n_images"), int)

    def findings(self) -> list[Finding]:
        m = self.metrics
        out = []
        for label in LABELS:
            roc = _section(m, "roc").get(label)
            curve = None
            if isinstance(roc, Mapping):
                fpr, tpr = roc.get("fpr"), roc.get("tpr")
                if isinstance(fpr, list) and isinstance(tpr, list) and len(fpr) == len(tpr) and len(fpr) <= 10_000:
                    xs = [_number(v) for v in fpr]
                    ys = [_number(v) for v in tpr]
                    if None not in xs and None not in ys:
                        curve = (xs, ys)  # type: ignore[assignment]
            positives = _section(m, "positives").get(label)
            out.append(Finding(label, _number(_section(m, "auroc").get(label)), _pair(_section(m, "auroc_ci95").get(label)),
                               positives if isinstance(positives, int) else None,
                               _number(_section(m, "accuracy").get(label)), curve))
        return out


def _section(m: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = m.get(key)
    return value if isinstance(value, Mapping) else {}


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else None


def _pair(v: Any) -> tuple[float, float] | None:
    if isinstance(v, list) and len(v) == 2 and all(_number(x) is not None for x in v):
        return float(v[0]), float(v[1])
    return None


def _read_json(path: Path) -> Any:
    with open(path, "rb") as fh:
        raw = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ValueError(f"larger than {MAX_MANIFEST_BYTES} bytes")
    return json.loads(raw)


def current_version(models_dir: Path) -> str | None:
    from cxrmodel.pointer import read_pointer
    try:
        return read_pointer(models_dir)["version"]
    except Exception:  # noqa: BLE001 - an unreadable pointer: no version is shown as current
        return None


def versions(models_dir: Path) -> list[Version]:
    """Every version on disk, newest first (as `Registry.list` orders them, reversed)."""
    if not models_dir.is_dir():
        return []
    current = current_version(models_dir)
    out = [_read_version(d, current) for d in models_dir.iterdir()
           if not d.name.startswith(".") and (d / "manifest.json").is_file()]
    return sorted(out, key=lambda v: (v.created, v.version), reverse=True)


def find(models_dir: Path, version: str) -> Version | None:
    """One version by name, reading only its own manifest (the registry names each folder after its
    version); None for a name that is not one folder's."""
    d = models_dir / version
    if not version or version.startswith(".") or Path(version).name != version or not (d / "manifest.json").is_file():
        return None
    found = _read_version(d, current_version(models_dir))
    return found if found.version == version else None


def _read_version(d: Path, current: str | None) -> Version:
    try:
        data = _read_json(d / "manifest.json")
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return Version(d.name, current=d.name == current, error=f"manifest unreadable ({exc})"[:200])
    source = data.get("source")
    metrics, training = data.get("metrics"), data.get("training")
    return Version(str(data.get("version") or d.name), str(data.get("created") or ""),
                   str(source.get("format", "")) if isinstance(source, dict) else "", d.name == current,
                   str(data.get("weights_sha256") or ""), metrics if isinstance(metrics, dict) else {},
                   training if isinstance(training, dict) else {})


def pointer_history(models_dir: Path) -> list[dict[str, str]]:
    """The registry's own record of promotions and rollbacks, newest first (the last lines)."""
    path = models_dir / HISTORY
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines[-MAX_HISTORY_LINES:]:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append({"at": str(item.get("at", "")), "event": str(item.get("event", "")),
                        "version": str(item.get("version") or "")})
    return out[::-1]


def retrain_runs(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """The newest retraining runs with their outcome and, from the report, why."""
    runs = session.scalars(select(RetrainRun).order_by(RetrainRun.id.desc()).limit(limit)).all()
    out = []
    for r in runs:
        try:
            report = json.loads(r.report or "{}")
        except ValueError:
            report = {}
        if not isinstance(report, dict):
            report = {}
        reasons = report.get("reasons") if isinstance(report.get("reasons"), list) else []
        why = report.get("reason") or report.get("error") or "; ".join(str(x) for x in reasons[:3])
        out.append({"id": r.id, "started_at": r.started_at.isoformat(timespec="seconds"),
                    "finished_at": r.finished_at.isoformat(timespec="seconds") if r.finished_at else "",
                    "trigger": r.trigger, "outcome": r.outcome, "candidate": r.candidate_version,
                    "new_images": report.get("new_images") if isinstance(report.get("new_images"), int) else None,
                    "candidate_auroc": _number(report.get("candidate_mean_auroc")),
                    "current_auroc": _number(report.get("current_mean_auroc")), "why": str(why)[:400]})
    return out
