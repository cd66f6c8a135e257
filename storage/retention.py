"""Image retention: crypto-shred stored images older than `retention_days`, and audit every deletion.

Why crypto-shredding: `Vault.delete` overwrites the object's wrapped data key before unlinking, so
the ciphertext is unreadable even where the file system (or a backup of the vault directory taken
after the purge) keeps its blocks. The image's re-identification entry (its sealed original
identifiers) is deleted in the same transaction: a purged image can no longer be tied back to a
patient. The database row stays (predictions and the audit trail refer to it by pseudonym) with
`vault_object` cleared, which is what marks an image as purged. Copies made for training (exported
PNGs, cached features) live outside storage's view: the caller removes them through `derived`,
called with each batch's pseudonymous SOP Instance UIDs after the objects are shredded and before
the rows commit, so a crash in between repeats it on the next run.

Radiology report texts (storage.reports) received before the cutoff, or whose matched study has no
stored image left, are crypto-shredded in the same run (`report.purged` per report).

What is never purged: an instance still waiting for inference (`received`), or one whose study
still has a result waiting to be sent (the heatmap needs the pixels). Audit rows are not touched
here at all: they have their own, longer retention (`storage.audit_retention_days`).

Crash safety: each batch deletes vault objects first, then commits the row updates and their audit
events together. A crash in between leaves rows pointing at objects that are gone; the next run
finds them, `delete` reports them missing, and they are committed as purged then.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

# (pseudonymous SOP Instance UIDs) -> {uid: derived files removed}
DerivedPurge = Callable[[Iterable[str]], dict[str, int]]

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage import audit
from storage.errors import StorageError
from storage.models import RECEIVED, Instance, ReidEntry, Result
from storage.reports import purge_reports


class RetentionError(StorageError):
    """The purge was refused (e.g. a non-positive retention period)."""


@dataclass(frozen=True)
class PurgeReport:
    cutoff: str               # UTC ISO: images received before this are expired
    expired: int              # instances selected (in a dry run: that would be purged)
    shredded: int             # vault objects crypto-shredded now
    missing: int              # rows whose object was already gone (e.g. after a crash mid-purge)
    dry_run: bool
    reports_shredded: int = 0  # radiology report texts crypto-shredded (storage.reports.purge_reports)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _expired(cutoff: datetime):  # noqa: ANN202 - a Select
    pending_result = exists().where(and_(Result.study_uid == Instance.study_uid,
                                         Result.state.in_(("pending", "sending"))))
    return (select(Instance.id, Instance.vault_object, Instance.study_uid, Instance.sop_instance_uid)
            .where(Instance.received_at < cutoff, Instance.vault_object.is_not(None),
                   Instance.state != RECEIVED, ~pending_result)
            .order_by(Instance.id))


def purge_expired(sessions: sessionmaker[Session], vault, audit_key: bytes, retention_days: int, *,  # noqa: ANN001
                  now: datetime | None = None, dry_run: bool = False, actor: str = "cxrd:retention",
                  host: str = "", batch: int = 200, derived: DerivedPurge | None = None) -> PurgeReport:
    """Crypto-shred every expired image; one `instance.deleted` event per image and one
    `purge.expired` summary, committed with the row updates (nothing is audited on a dry run).

    `vault` is a `storage.vault.Vault`; `retention_days` must be positive (0 means "keep forever" in
    the settings: the caller does not call this then).
    """
    if retention_days < 1:
        raise RetentionError("retention_days must be at least 1 to purge (0 = keep images forever)")
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=retention_days)
    stmt = _expired(cutoff)
    if dry_run:
        with sessions() as s:
            n = s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        texts = purge_reports(sessions, vault, audit_key, cutoff, actor=actor, host=host, dry_run=True)
        return PurgeReport(cutoff.isoformat(timespec="seconds"), int(n), 0, 0, True, texts)
    expired = shredded = missing = 0
    last_id = 0
    while True:
        with sessions() as s:
            rows = s.execute(stmt.where(Instance.id > last_id).limit(batch)).all()
        if not rows:
            break
        last_id = rows[-1].id
        gone = {r.id: vault.delete(r.vault_object) for r in rows}
        copies = derived([r.sop_instance_uid for r in rows]) if derived is not None else {}
        with sessions.begin() as s:
            for r in rows:
                s.execute(update(Instance).where(Instance.id == r.id).values(vault_object=None))
                s.execute(delete(ReidEntry).where(ReidEntry.sop_instance_uid == r.sop_instance_uid))
                audit.append(s, audit_key, event_type="instance.deleted", actor=actor, host=host,
                             study_uid=r.study_uid, object_uid=r.sop_instance_uid,
                             details={"why": "retention", "retention_days": retention_days,
                                      "crypto_shredded": gone[r.id],
                                      "training_copies_removed": copies.get(r.sop_instance_uid, 0)})
        expired += len(rows)
        shredded += sum(gone.values())
        missing += sum(not g for g in gone.values())
    # after the images: a report whose study has no image left goes with it
    texts = purge_reports(sessions, vault, audit_key, cutoff, actor=actor, host=host)
    report = PurgeReport(cutoff.isoformat(timespec="seconds"), expired, shredded, missing, False, texts)
    with sessions.begin() as s:
        audit.append(s, audit_key, event_type="purge.expired", actor=actor, host=host,
                     details=report.as_dict() | {"retention_days": retention_days})
    return report
