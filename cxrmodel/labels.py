"""The 14 ChestX-ray14 findings, in the canonical order every cxrd output uses.

Other models (CheXNet, TorchXRayVision, ...) order their outputs differently and some have more
outputs; their outputs are mapped to ours by *name*, never by position, because a silent
reordering would attach one finding's probability to another.
"""
from __future__ import annotations

from collections.abc import Sequence

LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NUM_LABELS = len(LABELS)
NO_FINDING = "No Finding"


def normalize_name(name: str) -> str:
    """Spelling-insensitive key: 'Pleural Thickening', 'pleural_thickening' and 'Pleural-Thickening' agree."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


_BY_KEY = {normalize_name(n): n for n in LABELS}


def canonical(name: str) -> str | None:
    """Our spelling of a finding name, or None when it is not one of the 14."""
    return _BY_KEY.get(normalize_name(name))


def index_of(name: str) -> int:
    """Position of a finding in `LABELS`; KeyError names the unknown label."""
    key = canonical(name)
    if key is None:
        raise KeyError(f"not a ChestX-ray14 finding: {name!r}")
    return LABELS.index(key)


def output_index(names: Sequence[str], labels: Sequence[str] = LABELS) -> list[int]:
    """For each of `labels`, the position in a model's output `names` that carries it.

    Raises ValueError naming the labels the other model does not predict, or names it lists twice.
    """
    keys = [normalize_name(n) for n in names]
    seen = {k for k in keys if k}
    dup = sorted({k for k in seen if keys.count(k) > 1})
    if dup:
        raise ValueError(f"model output names repeat: {', '.join(dup)}")
    missing = [lab for lab in labels if normalize_name(lab) not in seen]
    if missing:
        raise ValueError(f"model does not predict: {', '.join(missing)}")
    return [keys.index(normalize_name(lab)) for lab in labels]


def multi_hot(finding_labels: str) -> list[int]:
    """The NIH 'Finding Labels' cell ('Cardiomegaly|Effusion', 'No Finding') as 14 zeros/ones."""
    out = [0] * NUM_LABELS
    for part in finding_labels.split("|"):
        part = part.strip()
        if not part or part == NO_FINDING:
            continue
        out[index_of(part)] = 1
    return out
