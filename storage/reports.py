"""Radiology reports from the RIS: recorded by pseudonymous keys, matched to studies, purged with them.

What must stay true:
- No clear identifier in a row. The Study Instance UID is pseudonymised with the very key and
  function DICOM de-identification uses (`storage.deid.pseudonymize_uid`), so a report's `study_uid`
  equals its images' `instances.study_uid`; the Accession Number is kept only as a keyed hash
  (`accession_key`, the uid key under its own domain label), which ingest writes on each instance
  too; the message's control id (MSH-10, which some RIS build from accession numbers) only inside
  the keyed `message_key`.
- The report text is never in a row, a log line or a plain file: it is a vault object (encrypted
  under its own data key, wrapped by the keyring's KEK, crypto-shredded by `Vault.delete`) when
  `hl7.report_text = "encrypted"`, and never written at all when "discard" (the labeller's states,
  taken on arrival, are all that is kept).
- Recorded means durable: the vault object is fsynced before the row commits, and the listener
  acknowledges AA only after `record_report` returns. A crash between the two leaves an object no
  row names, which the start-up orphan sweep shreds (`referenced_text_objects`).
- A message seen before (same sender, same MSH-10) is not recorded twice: `message_key` is unique.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage import audit
from storage.keys import Keys
from storage.models import (EXPIRED, LABEL_MANUAL, LABEL_REPORT, LABELLED, MATCHED, NOT_ANALYSED, REFUSED, REPORT_STATES,
                            WAITING, Instance, Label, Report, utcnow)

TEXT_OBJECT_PREFIX = "report-"
FINAL_STATUSES = ("F", "C")  # OBR-25: final, corrected; anything else is recorded but not ground truth


def accession_key(uid_key: bytes, accession: str) -> str:
    """Keyed hash of an Accession Number ("" for none): equal for the same number in a DICOM header
    and an HL7 field, useless to anyone without the master key."""
    accession = accession.strip().rstrip("\x00").strip()
    if not accession:
        return ""
    return hmac.new(uid_key, b"accession\x00" + accession.encode("utf-8"), hashlib.sha256).hexdigest()


def message_key(uid_key: bytes, sender: str, control_id: str) -> str:
    """Keyed hash of (sender, MSH-10): what makes a message a duplicate."""
    msg = b"hl7-message\x00" + sender.encode("utf-8") + b"\x00" + control_id.encode("utf-8")
    return hmac.new(uid_key, msg, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class IncomingReport:
    """One parsed report message, still in clear: lives only in memory between parsing and recording."""
    sender: str            # MSH-3^MSH-4, as names (not identifying)
    message_type: str      # e.g. ORU^R01
    control_id: str        # MSH-10
    result_status: str     # OBR-25
    study_uid: str         # original Study Instance UID, "" when the message has none
    accession: str         # original Accession Number, "" when none
    text: str              # the report text (findings, impression, ...)

    def __repr__(self) -> str:  # never print the clear fields
        return f"IncomingReport(type={self.message_type!r}, status={self.result_status!r})"


@dataclass(frozen=True)
class Recorded:
    report_id: int
    duplicate: bool
    state: str
    reason: str = ""


class ReportStoreError(Exception):
    """The report could not be recorded (vault or database); nothing was acknowledged."""


def _first_recording(sessions: sessionmaker[Session], key: str) -> Recorded | None:
    """The recording of a message already recorded under `key` (sender + control id), if any."""
    with sessions() as s:
        first = s.execute(select(Report.id, Report.state).where(Report.message_key == key)).first()
    return Recorded(first.id, True, first.state) if first is not None else None


def record_report(sessions: sessionmaker[Session], vault, keys: Keys, incoming: IncomingReport,  # noqa: ANN001
                  findings: dict[str, str], *, keep_text: bool, match_wait_s: float, host: str = "",
                  now: datetime | None = None) -> Recorded:
    """Record one report durably (row + audit committed, text object fsynced first); `findings` are
    the labeller's states for its text. Duplicates return the first recording."""
    now = now or utcnow()
    key = message_key(keys.uid_key, incoming.sender, incoming.control_id)
    first = _first_recording(sessions, key)
    if first is not None:
        return first
    from storage.deid import pseudonymize_uid  # pydicom: only recording a report needs it, never `cxrd status`
    study = pseudonymize_uid(keys.uid_key, incoming.study_uid) if incoming.study_uid else ""
    accession = accession_key(keys.uid_key, incoming.accession)
    state, reason = WAITING, ""
    if incoming.result_status not in FINAL_STATUSES:
        status = incoming.result_status[:4] or "(none)"
        state, reason = REFUSED, f"result status {status} is not final (F) or corrected (C)"
    elif not study and not accession:
        state, reason = REFUSED, "no Study Instance UID and no Accession Number to match on"
    object_id = None
    if keep_text and state == WAITING:
        object_id = TEXT_OBJECT_PREFIX + secrets.token_hex(16)
        vault.put(object_id, incoming.text.encode("utf-8"))  # encrypted, fsynced, before the row
    try:
        with sessions.begin() as s:
            row = Report(message_key=key, sender=incoming.sender[:128], message_type=incoming.message_type[:16],
                         result_status=incoming.result_status[:4], study_uid=study, accession_hash=accession,
                         state=state, reason=reason, findings=json.dumps(findings, sort_keys=True),
                         text_object=object_id, received_at=now,
                         expires_at=now + timedelta(seconds=match_wait_s), matched_study_uid="")
            s.add(row)
            s.flush()
            report_id = row.id
            audit.append(s, keys.audit_key, event_type="report.received", actor=f"hl7:{incoming.sender[:120]}",
                         host=host, study_uid=study, object_uid=f"report:{report_id}",
                         details={"message_type": incoming.message_type, "result_status": incoming.result_status,
                                  "state": state, "reason": reason, "has_study_uid": bool(study),
                                  "has_accession": bool(accession), "text_kept": object_id is not None,
                                  "findings_named": len(findings)})
    except IntegrityError:  # the same message, recorded by a concurrent connection first
        _shred(vault, object_id)
        first = _first_recording(sessions, key)
        if first is None:
            raise ReportStoreError("a database constraint refused the report") from None
        return first
    except BaseException:
        _shred(vault, object_id)
        raise
    return Recorded(report_id, False, state, reason)


def _shred(vault, object_id: str | None) -> None:  # noqa: ANN001
    if object_id is not None:
        try:
            vault.delete(object_id)
        except Exception:  # the orphan sweep at the next start removes it
            pass


def read_text(vault, report: Report) -> str | None:  # noqa: ANN001
    """The decrypted report text, or None when it was discarded or purged."""
    if not report.text_object:
        return None
    try:
        return vault.get(report.text_object).decode("utf-8")
    except Exception:
        return None


def referenced_text_objects(session: Session) -> set[str]:
    """Vault objects report rows name (the orphan sweep must keep them)."""
    return set(session.scalars(select(Report.text_object).where(Report.text_object.is_not(None))))


# ------------------------------------------------------------------------------------------ matching


def candidates(session: Session, now: datetime, match_wait_s: float, limit: int = 200) -> list[int]:
    """Reports that may have something to do: waiting ones not yet expired whose images have come (by
    study UID or accession: chosen in SQL, so reports whose images never come, a RIS's CT reports
    say, neither cost a lookup each pass nor crowd out the others past `limit`), and matched or
    labelled ones still inside their wait whose study has analysed images without any label (images
    that came after the report)."""
    arrived = or_(and_(Report.study_uid != "", exists().where(Instance.study_uid == Report.study_uid)),
                  and_(Report.accession_hash != "", exists().where(Instance.accession_hash == Report.accession_hash)))
    waiting = select(Report.id).where(Report.state == WAITING, Report.expires_at > now, arrived)
    unlabelled = exists().where(and_(Instance.study_uid == Report.matched_study_uid,
                                     Instance.state != NOT_ANALYSED,
                                     ~exists().where(Label.instance_id == Instance.id)))
    late = select(Report.id).where(Report.state.in_((MATCHED, LABELLED)), Report.expires_at > now, unlabelled)
    ids = list(session.scalars(waiting.order_by(Report.id).limit(limit)))
    ids += list(session.scalars(late.order_by(Report.id).limit(limit)))
    return sorted(set(ids))


def find_study(session: Session, report: Report) -> tuple[str | None, str]:
    """(pseudonymous study UID, how it was found) for a report, or (None, why not)."""
    if report.matched_study_uid:
        return report.matched_study_uid, "matched before"
    if report.study_uid and session.scalar(select(Instance.id).where(Instance.study_uid == report.study_uid)
                                           .limit(1)) is not None:
        return report.study_uid, "study instance uid"
    if report.accession_hash:
        studies = list(session.scalars(select(Instance.study_uid).where(
            Instance.accession_hash == report.accession_hash).distinct().limit(2)))
        if len(studies) == 1:
            return studies[0], "accession number"
        if len(studies) > 1:
            return None, "ambiguous accession"
    return None, "no images yet"


def apply_report(session: Session, audit_key: bytes, report: Report, study_uid: str, how: str,
                 states: dict[str, str], now: datetime, host: str = "") -> int:
    """Write this report's labels for the study's analysed instances (manual labels and labels from a
    later report are kept); move the report to matched/labelled and audit. Returns labels written."""
    first_match = not report.matched_study_uid
    instances = list(session.scalars(select(Instance.id).where(Instance.study_uid == study_uid,
                                                               Instance.state != NOT_ANALYSED)
                                     .order_by(Instance.id)))
    findings = positives(states)
    written = 0
    for instance_id in instances:
        label = session.get(Label, instance_id)
        if label is None:
            session.add(Label(instance_id=instance_id, findings=findings, source=LABEL_REPORT,
                              states=json.dumps(states, sort_keys=True), report_id=report.id, imported_at=now))
        elif label.source == LABEL_MANUAL or (label.report_id or 0) > report.id:
            continue  # manual wins; a later (corrected) report wins over an earlier one
        elif label.report_id == report.id:
            continue
        else:
            label.findings, label.states, label.report_id = findings, json.dumps(states, sort_keys=True), report.id
            label.imported_at, label.used_in_model = now, ""
        written += 1
    report.matched_study_uid = study_uid
    report.matched_at = report.matched_at or now
    report.labelled += written
    report.state = LABELLED if report.labelled else MATCHED
    actor = f"hl7:{report.sender[:120]}"
    if first_match:
        audit.append(session, audit_key, event_type="report.matched", actor=actor, host=host, study_uid=study_uid,
                     object_uid=f"report:{report.id}", details={"by": how, "analysed_instances": len(instances)})
    if written:
        audit.append(session, audit_key, event_type="report.labelled", actor=actor, host=host, study_uid=study_uid,
                     object_uid=f"report:{report.id}",
                     details={"labels_written": written, "positive": sum(v == "positive" for v in states.values()),
                              "uncertain": sum(v == "uncertain" for v in states.values())})
    return written


def positives(states: dict[str, str]) -> str:
    """The ChestX-ray14 `findings` string of a state dict: its positives, or 'No Finding'."""
    pos = [f for f, v in states.items() if v == "positive"]
    return "|".join(pos) if pos else "No Finding"


def expire_waiting(sessions: sessionmaker[Session], vault, audit_key: bytes, now: datetime,  # noqa: ANN001
                   host: str = "", batch: int = 200) -> int:
    """Waiting reports whose images never came within their wait: expired, text shredded, audited."""
    with sessions() as s:
        rows = s.execute(select(Report.id, Report.text_object, Report.study_uid).where(
            Report.state == WAITING, Report.expires_at <= now).order_by(Report.id).limit(batch)).all()
    for r in rows:
        shredded = bool(r.text_object) and vault.delete(r.text_object)
        with sessions.begin() as s:
            s.execute(update(Report).where(Report.id == r.id, Report.state == WAITING)
                      .values(state=EXPIRED, text_object=None, reason="no images arrived within hl7.match_wait_s"))
            audit.append(s, audit_key, event_type="report.expired", actor="cxrd:report-matching", host=host,
                         study_uid=r.study_uid, object_uid=f"report:{r.id}",
                         details={"text_shredded": shredded})
    return len(rows)


# ------------------------------------------------------------------------------------------ purging


def purge_reports(sessions: sessionmaker[Session], vault, audit_key: bytes, cutoff: datetime, *,  # noqa: ANN001
                  actor: str = "cxrd:retention", host: str = "", dry_run: bool = False,
                  batch: int = 200) -> int:
    """Crypto-shred the text of reports received before `cutoff`, and of reports whose matched study
    has no stored image left (purged with the study). The row stays (its pseudonymous keys and the
    labels it produced), like a purged instance's. One `report.purged` event per report."""
    study_gone = and_(Report.matched_study_uid != "",
                      ~exists().where(and_(Instance.study_uid == Report.matched_study_uid,
                                           Instance.vault_object.is_not(None))))
    stmt = (select(Report.id, Report.text_object, Report.matched_study_uid, Report.study_uid)
            .where(Report.text_object.is_not(None), (Report.received_at < cutoff) | study_gone)
            .order_by(Report.id))
    if dry_run:
        with sessions() as s:
            return int(s.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    done, last = 0, 0
    while True:
        with sessions() as s:
            rows = s.execute(stmt.where(Report.id > last).limit(batch)).all()
        if not rows:
            return done
        last = rows[-1].id
        gone = {r.id: vault.delete(r.text_object) for r in rows}
        with sessions.begin() as s:
            for r in rows:
                s.execute(update(Report).where(Report.id == r.id).values(text_object=None))
                audit.append(s, audit_key, event_type="report.purged", actor=actor, host=host,
                             study_uid=r.matched_study_uid or r.study_uid, object_uid=f"report:{r.id}",
                             details={"why": "retention", "crypto_shredded": gone[r.id]})
        done += len(rows)


def counts_by_state(session: Session) -> dict[str, int]:
    """Reports per state: every state of REPORT_STATES in order (0 when none), then any other found."""
    found = {state: int(n) for state, n in session.execute(select(Report.state, func.count()).group_by(Report.state))}
    return {state: found.get(state, 0) for state in REPORT_STATES} | dict(sorted(found.items()))

