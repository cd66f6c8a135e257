"""The audit chain core: append-only events, each HMAC-chained to the previous one, and their verification.

Why a keyed chain: a plain hash chain can be recomputed by anyone who can write the table; with the
audit sub-key (derived from the master key, never stored in the database) a DBA who edits, deletes or
reorders rows cannot forge matching hashes. Each row's hash covers its own sequence number, so a
removed row leaves a gap and a reordered row breaks its own hash as well as the link of its successor.
(Removing rows from the *end* is only visible against an anchor: `verify` returns the last seq and
hash so a caller can store them elsewhere and pass them back as `expect_head`.)

`append` runs inside the caller's transaction (ingest commits instance + job + audit row together).
It serialises writers: on PostgreSQL with `pg_advisory_xact_lock`, on SQLite through the engine's
BEGIN IMMEDIATE (the write lock is already held when we read the chain head).

Event types are cxrd names mapped in one place (`EVENTS`) to DICOM PS3.15 A.5 / DCM event ids and
an action code (C create, R read, U update, D delete, E execute).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from storage.errors import AuditError
from storage.models import AuditEvent

GENESIS = "0" * 64
ADVISORY_LOCK_ID = 7437002  # storage.db uses 7437001 for migrations

# event id codes (DCM, PS3.16 CID 400 / PS3.15 A.5)
APPLICATION_ACTIVITY = "110100"
AUDIT_LOG_USED = "110101"
INSTANCES_ACCESSED = "110103"
INSTANCES_TRANSFERRED = "110104"
STUDY_DELETED = "110105"
EXPORT = "110106"
IMPORT = "110107"
PATIENT_RECORD = "110110"
QUERY = "110112"
SECURITY_ALERT = "110113"
USER_AUTHENTICATION = "110114"

OUTCOMES = {0: "success", 4: "minor failure", 8: "serious failure", 12: "major failure"}

#: cxrd event type -> (DICOM event id, action). The one place that says what an event means.
EVENTS: dict[str, tuple[str, str]] = {
    "app.start": (APPLICATION_ACTIVITY, "E"),
    "app.stop": (APPLICATION_ACTIVITY, "E"),
    "app.init": (APPLICATION_ACTIVITY, "E"),
    "instance.stored": (INSTANCES_TRANSFERRED, "C"),
    "instance.duplicate": (INSTANCES_TRANSFERRED, "C"),
    "instance.ignored": (INSTANCES_TRANSFERRED, "E"),
    "instance.rejected": (INSTANCES_TRANSFERRED, "E"),
    "instance.failed": (INSTANCES_TRANSFERRED, "E"),
    "instance.quarantined": (SECURITY_ALERT, "E"),
    "instance.read": (INSTANCES_ACCESSED, "R"),
    "instance.deleted": (INSTANCES_ACCESSED, "D"),
    "prediction.created": (PATIENT_RECORD, "C"),
    "result.sent": (INSTANCES_TRANSFERRED, "R"),
    "result.failed": (INSTANCES_TRANSFERRED, "R"),
    "results.retry": (APPLICATION_ACTIVITY, "U"),  # failed results set back to pending by a person
    "predictions.query": (QUERY, "E"),
    "audit.query": (AUDIT_LOG_USED, "R"),
    "audit.verify": (AUDIT_LOG_USED, "R"),
    "audit.export": (AUDIT_LOG_USED, "R"),
    "export.training": (EXPORT, "R"),
    "import.labels": (IMPORT, "C"),
    "model.trained": (APPLICATION_ACTIVITY, "E"),
    "model.promoted": (APPLICATION_ACTIVITY, "U"),
    "model.rejected": (APPLICATION_ACTIVITY, "E"),
    "model.rollback": (APPLICATION_ACTIVITY, "U"),
    "model.imported": (IMPORT, "C"),
    # shadow candidates (daemon.stages.shadow): chosen, stopped, turned off by the worker, put by retraining
    "model.shadow": (APPLICATION_ACTIVITY, "U"),
    "model.shadow.off": (APPLICATION_ACTIVITY, "U"),
    "model.shadow.disabled": (APPLICATION_ACTIVITY, "E"),
    "model.shadowed": (APPLICATION_ACTIVITY, "E"),
    "reid.lookup": (PATIENT_RECORD, "R"),
    "reid.refused": (PATIENT_RECORD, "R"),
    "backup.created": (EXPORT, "R"),
    "backup.restored": (IMPORT, "C"),
    "keys.created": (SECURITY_ALERT, "C"),
    "keys.rotated": (SECURITY_ALERT, "U"),
    "keys.retired": (SECURITY_ALERT, "D"),
    "security.tamper": (SECURITY_ALERT, "E"),
    "security.alert": (SECURITY_ALERT, "E"),
    "association.rejected": (USER_AUTHENTICATION, "E"),
    "association.accepted": (USER_AUTHENTICATION, "E"),
    # added with the compliance commands (storage.audit_query / audit_export / retention)
    "reid.pseudonymize": (PATIENT_RECORD, "R"),  # an original UID was used to search (with a reason)
    "purge.expired": (STUDY_DELETED, "D"),       # image retention purge (crypto-shredding) summary
    "config.loaded": (APPLICATION_ACTIVITY, "E"),
    # radiology reports from the RIS (daemon.hl7, storage.reports); details never carry report text
    "report.received": (IMPORT, "C"),       # recorded, then acknowledged AA
    "report.refused": (IMPORT, "E"),        # answered AE or AR: nothing recorded
    "report.matched": (PATIENT_RECORD, "U"),
    "report.labelled": (PATIENT_RECORD, "C"),
    "report.expired": (PATIENT_RECORD, "D"),
    "report.purged": (STUDY_DELETED, "D"),
    "hl7.connection_refused": (USER_AUTHENTICATION, "E"),
    # web console (daemon.console, storage.accounts): actor "console:NAME", host = the client address
    "console.signin": (USER_AUTHENTICATION, "E"),          # success
    "console.signin_failed": (USER_AUTHENTICATION, "E"),   # wrong password, unknown or disabled name, no role
    "console.locked": (USER_AUTHENTICATION, "E"),          # a name or address just locked out
    "console.signout": (USER_AUTHENTICATION, "E"),         # by the person, or an idle/absolute time-out
    "console.access_denied": (SECURITY_ALERT, "E"),        # a signed-in person refused a page of another role
    # console accounts changed (`cxrd users`, the accounts page)
    "users.listed": (APPLICATION_ACTIVITY, "R"),     # who looked at the account list
    "users.added": (SECURITY_ALERT, "C"),
    "users.disabled": (SECURITY_ALERT, "U"),
    "users.enabled": (SECURITY_ALERT, "U"),
    "users.password_reset": (SECURITY_ALERT, "U"),
    "users.role_set": (SECURITY_ALERT, "U"),
    # monitoring (daemon.stages.monitoring): an alarm starting or ending, once per crossing
    "monitor.drift": (APPLICATION_ACTIVITY, "E"),
    "monitor.performance_drop": (APPLICATION_ACTIVITY, "E"),
    "monitor.cleared": (APPLICATION_ACTIVITY, "E"),
}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


_FIELDS = ("seq", "occurred_at", "event_id", "event_type", "action", "outcome", "actor", "host",
           "study_uid", "object_uid", "details", "prev_hash")


def _hash(key: bytes, values: tuple) -> str:
    """HMAC-SHA256 over the fields joined by US (0x1f): unambiguous because no field may hold a
    control character (`append` refuses them; `details` is ASCII JSON, which escapes them)."""
    return hmac.digest(key, "\x1f".join(map(str, values)).encode(), "sha256").hex()


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


_TABLE = AuditEvent.__table__
_HEAD = select(_TABLE.c.seq, _TABLE.c.hash).order_by(_TABLE.c.seq.desc()).limit(1)


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_ID})


def append(session: Session, audit_key: bytes, *, event_type: str, event_id: str | None = None,
           outcome: int = 0, actor: str = "", host: str = "", study_uid: str = "", object_uid: str = "",
           details: dict[str, Any] | None = None, action: str | None = None) -> AuditEvent:
    """Write one chained event in the caller's transaction (not committed); returns a detached copy.

    `event_id`/`action` default from `EVENTS`; an unknown `event_type` needs an explicit `event_id`.
    Object fields take pseudonymous UIDs only; `details` must be JSON-serialisable and PHI-free.
    (Ingest appends through `storage.rows`, on the driver's cursor, with the same two steps.)
    """
    values = new_event(event_type=event_type, event_id=event_id, outcome=outcome, actor=actor, host=host,
                       study_uid=study_uid, object_uid=object_uid, details=details, action=action)
    _lock(session)
    session.flush()  # the caller's pending rows go first, as an ORM query's autoflush would do
    chain(audit_key, values, session.connection().execute(_HEAD).first())
    # A Core insert, not the ORM's unit of work: every stored image appends a row before its C-STORE response.
    session.connection().execute(insert(_TABLE), values)
    return AuditEvent(**values)  # a detached copy of what was written, for the caller to read


def new_event(*, event_type: str, event_id: str | None = None, outcome: int = 0, actor: str = "",
              host: str = "", study_uid: str = "", object_uid: str = "",
              details: dict[str, Any] | None = None, action: str | None = None) -> dict[str, Any]:
    """The checked fields of one event, without its place in the chain (see `chain`)."""
    known = EVENTS.get(event_type)
    if known is None and event_id is None:
        raise AuditError(f"unknown audit event type {event_type!r} (add it to storage.audit.EVENTS)")
    event_id = event_id or known[0]
    action = action or (known[1] if known else "E")
    if outcome not in OUTCOMES:
        raise AuditError(f"audit outcome must be one of {sorted(OUTCOMES)}")
    try:
        details_json = json.dumps(details or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except (TypeError, ValueError):
        raise AuditError(f"audit details of {event_type} are not JSON-serialisable") from None
    for name, value in (("event_type", event_type), ("event_id", event_id), ("action", action),
                        ("actor", actor), ("host", host), ("study_uid", study_uid), ("object_uid", object_uid)):
        if _CONTROL.search(value):
            raise AuditError(f"audit field {name} contains control characters")
    return {"event_id": event_id, "event_type": event_type,
            "action": action, "outcome": outcome, "actor": actor[:128], "host": host[:64],
            "study_uid": study_uid, "object_uid": object_uid, "details": details_json}


def chain(audit_key: bytes, values: dict[str, Any], head: tuple | None) -> dict[str, Any]:
    """Place an event after the chain's head (seq, hash), read under the writers' lock: sets its
    seq, time (taken under the lock too, so time order is chain order), prev_hash and hash in
    `values`, which it returns."""
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
    values["seq"], values["occurred_at"], values["prev_hash"] = seq, _now(), prev
    values["hash"] = _hash(audit_key, tuple(values[f] for f in _FIELDS))
    return values


def record_tamper(session: Session, audit_key: bytes, exc: Exception, *, what: str = "vault",
                  actor: str = "", host: str = "", study_uid: str = "") -> AuditEvent:
    """Audit a failed integrity check (a `storage.errors.TamperError`) as a major security alert."""
    return append(session, audit_key, event_type="security.tamper", outcome=12, actor=actor, host=host,
                  study_uid=study_uid, object_uid=str(getattr(exc, "object_id", ""))[:64],
                  details={"what": what, "reason": str(getattr(exc, "reason", type(exc).__name__))})


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    rows: int
    first_bad_seq: int | None
    reason: str
    last_seq: int | None = None
    last_hash: str | None = None
    last_at: str | None = None  # occurred_at of the last row: with seq and hash, a complete anchor

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "first_bad_seq": self.first_bad_seq,
                "reason": self.reason, "last_seq": self.last_seq, "last_hash": self.last_hash,
                "last_at": self.last_at}


def _hasher(key: bytes) -> Callable[[tuple], str]:
    """A per-row `_hash` for verification: HMAC-SHA256 with the key's inner/outer pads absorbed once
    (RFC 2104), so each row costs two SHA-256 copies instead of re-keying; identical output to
    `_hash` (a test checks). The per-row HMAC dominates `verify`, so re-keying per row is worth avoiding."""
    k = key if len(key) <= 64 else hashlib.sha256(key).digest()
    k = k.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in k))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in k))
    fmt = "\x1f".join(["{}"] * len(_FIELDS)).format

    def row_hash(values: tuple) -> str:
        i = inner.copy()
        i.update(fmt(*values).encode())
        o = outer.copy()
        o.update(i.digest())
        return o.hexdigest()
    return row_hash


def _raw_rows(session: Session, sql: str, batch: int) -> Iterator[tuple]:
    """Plain driver tuples in batches, without SQLAlchemy's per-row Row objects: on PostgreSQL from a
    server-side (named) cursor so a year of rows never sits in memory at once."""
    conn = session.connection()
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        cur = dbapi.cursor(name="cxrd_audit_verify")
        cur.itersize = batch
    elif conn.dialect.name == "sqlite":
        cur = dbapi.cursor()
    else:  # any other driver: SQLAlchemy's streaming, still without ORM objects
        result = conn.execution_options(stream_results=True, yield_per=batch).exec_driver_sql(sql)
        for part in result.partitions():
            yield from (tuple(r) for r in part)
        return
    try:
        cur.execute(sql)
        while rows := cur.fetchmany(batch):
            yield from rows
    finally:
        cur.close()


def verify(session: Session, audit_key: bytes, *, expect_head: tuple[int, str] | None = None,
           anchored_at: str | None = None, batch: int = 20000,
           progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Walk the chain in seq order and report the first row changed, removed or reordered.

    Streams driver tuples in batches so memory stays flat for millions of rows. `expect_head=(seq,
    hash)` additionally detects rows removed from the end since that anchor was taken.

    Rows written after a cut from the end take the removed numbers again (each new row is head + 1)
    and chain correctly, so the chain alone cannot tell where the cut began. `anchored_at`, a time
    (UTC ISO, as `occurred_at` is stored) at or after the anchored head was written, can: no row the
    anchor covers is later than it, so the first later row at or below the anchored seq is where the
    removed rows began.

    `progress(rows)` is called after every `batch` rows checked (a console shows how far it got).
    """
    sql = f"SELECT {', '.join(_FIELDS)}, hash FROM {AuditEvent.__tablename__} ORDER BY seq"
    prev_seq, prev_hash, rows = 0, GENESIS, 0
    row_hash = _hasher(audit_key)
    compare = hmac.compare_digest
    for r in _raw_rows(session, sql, batch):
        rows += 1
        values = r[:-1]
        seq = values[0]
        if seq != prev_seq + 1:
            return VerifyReport(False, rows, prev_seq + 1, f"row {prev_seq + 1} is missing (next is {seq})")
        if values[-1] != prev_hash:
            return VerifyReport(False, rows, seq, f"row {seq} does not link to row {prev_seq} "
                                                  "(removed, reordered or replaced)")
        if not compare(row_hash(values).encode(), str(r[-1]).encode()):
            return VerifyReport(False, rows, seq, f"row {seq} content does not match its hash (modified)")
        prev_seq, prev_hash = seq, r[-1]
        if progress is not None and rows % batch == 0:
            progress(rows)
    if expect_head is not None:
        seq, h = expect_head
        found = session.execute(select(AuditEvent.hash).where(AuditEvent.seq == seq)).scalar()
        if found != h:
            rewritten = _first_written_after(session, anchored_at, prev_seq) if anchored_at else None
            if prev_seq < seq or rewritten is not None:
                return _cut_report(rows, prev_seq, seq, rewritten, timed=anchored_at is not None)
            return VerifyReport(False, rows, seq, f"row {seq} differs from the anchored head")
    return VerifyReport(True, rows, None, "chain intact", prev_seq or None,
                        prev_hash if prev_seq else None, _time_of(session, prev_seq) if prev_seq else None)


def _first_written_after(session: Session, moment: str, last_seq: int) -> int | None:
    """Where the run of rows later than `moment` that ends the chain begins (reused numbers), or
    None when the last row is not later. Only the final run counts, so a row with an odd time
    earlier in the chain (a clock stepped back) is not blamed."""
    covered = session.execute(select(func.max(AuditEvent.seq))
                              .where(AuditEvent.seq <= last_seq, AuditEvent.occurred_at <= moment)).scalar()
    first = (covered or 0) + 1
    return first if first <= last_seq else None


def _cut_report(rows: int, last_seq: int, anchored_seq: int, rewritten: int | None, *,
                timed: bool) -> VerifyReport:
    """Rows removed from the end since the anchor; with `rewritten`, rows written since took their
    numbers from there on (the cut began at that row, not after the chain's present end)."""
    first = min(last_seq + 1, rewritten) if rewritten is not None else last_seq + 1
    reason = f"rows {first}..{anchored_seq} were removed from the end"
    if first <= last_seq:
        reason += f" (rows {first}..{last_seq} now in the table were written after the removal)"
    elif not timed:  # without the anchor's time a row written since the cut cannot be told apart
        reason += " (at least: rows written since may have taken removed numbers)"
    return VerifyReport(False, rows, first, reason)


def _time_of(session: Session, seq: int) -> str | None:
    return session.execute(select(AuditEvent.occurred_at).where(AuditEvent.seq == seq)).scalar()
