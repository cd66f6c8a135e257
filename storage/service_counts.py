"""How many images the service holds by state, and how many it received but did not store: the
counts `cxrd status` prints and the console's service page shows, from one definition so the two
never disagree.

Images that leave no instance row are counted where ingest records them, the audit trail
(`event_type` is indexed): ingest's own failures are the ones a peer (`aet:...`) is the actor of; the
worker's have an instance row and are counted there as failed.
"""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import INSTANCE_STATES, AuditEvent, Instance


def images_by_state(session: Session) -> dict[str, int]:
    """Stored instances per state, every state present (0 when none)."""
    rows = dict(session.execute(select(Instance.state, func.count()).group_by(Instance.state)).all())
    return {s: int(rows.get(s, 0)) for s in INSTANCE_STATES}


def not_stored(session: Session) -> dict[str, int]:
    """Received but not stored: ignored (not a chest radiograph, acknowledged), rejected (the same,
    with dicom.non_chest = "reject") and refused (ingest could not store it: pixel data,
    de-identification, disk)."""
    counts = dict(session.execute(
        select(AuditEvent.event_type, func.count())
        .where(AuditEvent.event_type.in_(("instance.ignored", "instance.rejected")))
        .group_by(AuditEvent.event_type)).all())
    refused = session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.event_type == "instance.failed", AuditEvent.actor.like("aet:%")))
    return {"ignored": int(counts.get("instance.ignored", 0)), "rejected": int(counts.get("instance.rejected", 0)),
            "refused": int(refused or 0)}
