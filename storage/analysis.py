"""Which stored images the model did not see, and why: the queries `cxrd status` and reports use.

The decision itself is made at ingest (`daemon.stages.view_rule`) and kept on the instance row
(`state = not_analysed`, `view`, `analysis_reason`); these read it back. Only pseudonymous UIDs
and the rule's own words are returned, never an attribute value.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import NOT_ANALYSED, Instance


@dataclass(frozen=True)
class NotAnalysed:
    sop_instance_uid: str  # pseudonym
    view: str
    reason: str


def not_analysed_by_view(session: Session) -> dict[str, int]:
    """How many stored images were not analysed, per view (lateral, decubitus, ...), most first."""
    rows = session.execute(select(Instance.view, func.count()).where(Instance.state == NOT_ANALYSED)
                           .group_by(Instance.view)).all()
    return {view or "unknown": n for view, n in sorted(rows, key=lambda r: (-r[1], r[0]))}


def not_analysed_in_study(session: Session, study_uid: str) -> list[NotAnalysed]:
    """The images of one (pseudonymous) study the model did not see, oldest first: what a report
    lists as not analysed, with the reason."""
    rows = session.execute(select(Instance.sop_instance_uid, Instance.view, Instance.analysis_reason)
                           .where(Instance.study_uid == study_uid, Instance.state == NOT_ANALYSED)
                           .order_by(Instance.id)).all()
    return [NotAnalysed(sop, view, reason) for sop, view, reason in rows]
