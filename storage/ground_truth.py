"""The ground-truth store as numbers: what monitoring compares predictions with.

Every label row carries a state for each of the 14 findings (`labels.states`): a manual import
(`cxrd labels import`) says positive for the findings it lists and negative for the rest; a label
from a radiology report says what the report says, with a finding the report does not name taken
as negative (the convention of CheXpert-style report labellers for evaluation; the labeller's raw
output, "not mentioned" included, stays in `reports.findings`). Manual labels are never replaced by
report labels, so this reads one row per instance whatever its source.
"""
from __future__ import annotations

import json

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import LABEL_MANUAL, LABEL_REPORT, Label

_VALUE = {"positive": 1, "negative": 0, "uncertain": None}


def ground_truth(session: Session) -> dict[int, dict[str, int | None]]:
    """{instance_id: {finding: 1 (positive) | 0 (negative) | None (uncertain)}} for every labelled
    instance, manual and report labels alike. Uncertain stays None whatever `labels.uncertain_as`
    says (that setting is for training): a monitor should leave those out of its counts."""
    out: dict[int, dict[str, int | None]] = {}
    for instance_id, states in session.execute(select(Label.instance_id, Label.states)):
        try:
            parsed = json.loads(states or "{}")
        except ValueError:
            continue
        if isinstance(parsed, dict):
            out[instance_id] = {str(f): _VALUE[v] for f, v in parsed.items() if v in _VALUE}
    return out


def counts_by_source(session: Session) -> dict[str, int]:
    """Label rows per source: manual and report first (0 when none), then any other found."""
    found = {source: int(n) for source, n in session.execute(select(Label.source, func.count()).group_by(Label.source))}
    return {source: found.get(source, 0) for source in (LABEL_MANUAL, LABEL_REPORT)} | dict(sorted(found.items()))
