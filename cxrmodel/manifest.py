"""`manifest.json`: everything needed to use and to judge one model version, beside its weights.

A prediction stored in the database names a model version; the manifest of that version says
which weights (sha256), which labels in which order, how images were preprocessed, at which
thresholds a probability counts as positive, what data it was trained on and how it scored. It is
written once when the version is added and never edited.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from .errors import ModelError
from .labels import LABELS
from .network import ArchSpec
from .preprocess import TORCHVISION_SPEC, PreprocessSpec

FORMAT_VERSION = 1
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Manifest:
    architecture: ArchSpec = field(default_factory=ArchSpec)
    preprocessing: PreprocessSpec = TORCHVISION_SPEC
    thresholds: Mapping[str, float] = field(default_factory=dict)  # missing labels use 0.5
    training: Mapping[str, Any] = field(default_factory=dict)       # data summary: sources, counts, split, epochs
    metrics: Mapping[str, Any] = field(default_factory=dict)        # e.g. {"auroc": {label: x}, "mean_auroc": x}
    source: Mapping[str, Any] = field(default_factory=dict)         # import format/file/sha256, or "train"
    labels: tuple[str, ...] = LABELS
    version: str = ""
    created: str = ""
    weights_file: str = "weights.pt"
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if tuple(self.labels) != LABELS:
            raise ModelError("manifest labels must be the 14 ChestX-ray14 findings in canonical order")
        for label, t in self.thresholds.items():
            if label not in LABELS:
                raise ModelError(f"threshold for unknown label {label!r}")
            if not 0.0 <= float(t) <= 1.0:
                raise ModelError(f"threshold for {label} must be within [0, 1]")

    def threshold(self, label: str) -> float:
        return float(self.thresholds.get(label, DEFAULT_THRESHOLD))

    def threshold_list(self) -> list[float]:
        return [self.threshold(label) for label in LABELS]

    def stamped(self, version: str, weights_sha256: str) -> "Manifest":
        """Copy with the registry's fields filled in (version, creation time, weights hash)."""
        created = self.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        return replace(self, version=version, weights_sha256=weights_sha256, created=created)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "version": self.version,
            "created": self.created,
            "architecture": self.architecture.to_dict(),
            "labels": list(self.labels),
            "preprocessing": self.preprocessing.to_dict(),
            "thresholds": {k: float(self.thresholds[k]) for k in LABELS if k in self.thresholds},
            "training": dict(self.training),
            "metrics": dict(self.metrics),
            "source": dict(self.source),
            "weights_file": self.weights_file,
            "weights_sha256": self.weights_sha256,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=_jsonable) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        if int(data.get("format_version", 0)) != FORMAT_VERSION:
            raise ModelError(f"manifest format {data.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
        try:
            return cls(
                architecture=ArchSpec.from_dict(data["architecture"]),
                preprocessing=PreprocessSpec.from_dict(data["preprocessing"]),
                thresholds={k: float(v) for k, v in data.get("thresholds", {}).items()},
                training=data.get("training", {}), metrics=data.get("metrics", {}), source=data.get("source", {}),
                labels=tuple(data["labels"]), version=str(data.get("version", "")),
                created=str(data.get("created", "")), weights_file=str(data.get("weights_file", "weights.pt")),
                weights_sha256=str(data.get("weights_sha256", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"manifest is malformed ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ModelError(f"manifest is not JSON (line {exc.lineno})") from None


def _jsonable(value: Any) -> Any:
    """numpy/torch scalars and arrays in training summaries and metrics."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)
