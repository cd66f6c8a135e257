"""The re-identification map: original identifiers of each instance, sealed under their own key.

Results go back to the PACS under the *original* Study/Series/SOP UIDs and accession number, so
ingest keeps them - but only inside `ReidEntry.sealed`, AES-256-GCM under the re-identification
sub-key with the pseudonymous SOP Instance UID as associated data (a blob moved to another row does
not open). Nothing else in the database or on disk holds them in clear.

Reading the map for a person (`reidentify`) is a break-glass operation: it needs a reason and
always appends an audit event in the same transaction, found or not.
The results sender uses `open_entry` directly (a machine path, audited by its own `result.sent`).
"""
from __future__ import annotations

import json
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from storage import audit
from storage.errors import ReidError, TamperError
from storage.models import ReidEntry
from storage.vault import open_sealed, seal

REID_FIELDS = ("study_uid", "series_uid", "sop_instance_uid", "accession_number", "patient_id",
               "patient_name", "study_date", "issuer_of_patient_id")


def _aad(pseudo_sop_uid: str) -> bytes:
    return b"cxrd-reid\x00" + pseudo_sop_uid.encode()


def seal_reid(key: bytes, pseudo_sop_uid: str, original: dict[str, str]) -> bytes:
    """Seal an instance's original identifiers; the pseudonym is bound as associated data."""
    body = json.dumps({k: str(v) for k, v in original.items()}, sort_keys=True,
                      separators=(",", ":")).encode()
    return seal(key, _aad(pseudo_sop_uid), body)


def open_reid(key: bytes, pseudo_sop_uid: str, blob: bytes) -> dict[str, str]:
    """Inverse of `seal_reid`; TamperError naming the pseudonym if it does not authenticate."""
    return json.loads(open_sealed(key, _aad(pseudo_sop_uid), blob, object_id=pseudo_sop_uid))


def store_entry(session: Session, key: bytes, *, pseudo_sop_uid: str, pseudo_study_uid: str,
                original: dict[str, str]) -> None:
    """Insert the sealed entry in the caller's transaction. (Ingest writes the same row through
    `storage.rows`, after the instance row whose unique SOP Instance UID guarantees no entry for
    this pseudonym exists yet.)"""
    session.connection().execute(insert(ReidEntry.__table__), {
        "sop_instance_uid": pseudo_sop_uid, "study_uid": pseudo_study_uid,
        "sealed": seal_reid(key, pseudo_sop_uid, original)})


def open_entry(session: Session, key: bytes, pseudo_sop_uid: str) -> dict[str, str] | None:
    """The originals of one instance, or None if there is no entry (no audit: machine use)."""
    row = session.get(ReidEntry, pseudo_sop_uid)
    return None if row is None else open_reid(key, row.sop_instance_uid, row.sealed)


def reidentify(session: Session, reid_key: bytes, audit_key: bytes, *, reason: str, actor: str,
               host: str = "", study: str | None = None, instance: str | None = None
               ) -> list[dict[str, Any]]:
    """Break-glass lookup by pseudonymous study or instance UID; audited in the caller's transaction.

    Returns one dict per instance: {"pseudo_sop_instance_uid", "pseudo_study_uid", **originals}.
    Refuses (ReidError, audited as `reid.refused`) without a reason or without exactly one selector.
    A tampered entry is audited as a security alert and raises TamperError - the caller must commit
    before re-raising so the alert is kept.
    """
    reason = (reason or "").strip()
    if not reason or (study is None) == (instance is None):
        audit.append(session, audit_key, event_type="reid.refused", outcome=4, actor=actor, host=host,
                     study_uid=study or "", object_uid=instance or "",
                     details={"why": "no reason" if not reason else "need exactly one of study/instance"})
        raise ReidError("reidentify needs a non-empty --reason and exactly one of --study/--instance")
    stmt = select(ReidEntry)
    stmt = stmt.where(ReidEntry.study_uid == study) if study else \
        stmt.where(ReidEntry.sop_instance_uid == instance)
    rows = session.execute(stmt.order_by(ReidEntry.sop_instance_uid)).scalars().all()
    out: list[dict[str, Any]] = []
    for row in rows:
        try:
            originals = open_reid(reid_key, row.sop_instance_uid, row.sealed)
        except TamperError as exc:
            audit.append(session, audit_key, event_type="security.tamper", outcome=12, actor=actor,
                         host=host, study_uid=row.study_uid, object_uid=row.sop_instance_uid,
                         details={"what": "reid_map", "reason": exc.reason})
            raise
        out.append({"pseudo_sop_instance_uid": row.sop_instance_uid,
                    "pseudo_study_uid": row.study_uid, **originals})
    audit.append(session, audit_key, event_type="reid.lookup", outcome=0 if out else 4, actor=actor,
                 host=host, study_uid=study or (rows[0].study_uid if rows else ""),
                 object_uid=instance or "",
                 details={"reason": reason[:500], "selector": "study" if study else "instance",
                          "instances": len(out)})
    return out
