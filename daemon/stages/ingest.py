"""Ingest: one received dataset in, one DICOM status out — and 0x0000 only once the image is durable.

Order of work for a chest radiograph whose pixel data is what its header declares
(`pixel_checks`): de-identify -> serialise -> encrypt + write + fsync (vault),
and meanwhile the statements of one transaction (instance + job + re-identification entry + audit
row; on PostgreSQL the audit row waits for the object, see `_persist`) -> commit once the object is
durable -> 0x0000. The two fsyncs (object file, database log) stay in that order; what overlaps is
the encryption and write with the statements. If anything fails before the object is durable or
the database refuses the rows, the vault object written for this attempt is shredded, so a failure
leaves nothing half-written and the PACS can simply send again. A failure during the commit itself
keeps the object (the commit may have landed; the orphan sweep at start shreds it if not). Every
vault object id is unique per attempt, so a concurrent duplicate can never shred the copy another
thread committed. A duplicate SOP Instance UID is found by the unique index at insert time, then
confirmed by a read (only on that rare path), so another failed constraint is never mistaken for
"already stored".

Which outcome each image has (stored, duplicate, refused, failed, ...) is decided here and nowhere
else; which DICOM status each outcome earns, in `daemon.dicom.statuses`. Whether a stored image is
analysed (frontal views only, `view_rule`) is decided here too, on the original attributes before
de-identification removes the descriptions: an image that is not gets no job, the final state
`not_analysed` and the reason on its row and in its `instance.stored` audit event.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, InterfaceError
from sqlalchemy.orm import Session, sessionmaker

from daemon.dicom import statuses
from daemon.ops.logs import event
from daemon.stages.chest_rule import ChestRule, Verdict, is_chest_radiograph
from daemon.stages.pixel_checks import pixel_problem
from daemon.stages.view_rule import ViewDecision, decide_view
from storage import reid
from storage.deid import PROFILE_EDITION, DeidOptions, DeidResult, burned_in_refusal, deidentify
from storage.dicomfile import UnwritableDataset, file_parts
from storage.errors import DatabaseUnavailable, DeidError, VaultError
from storage.keys import Keys
from storage.models import NOT_ANALYSED, RECEIVED, Instance
from storage.reports import accession_key, referenced_text_objects
from storage.rows import IngestRows, RowConflict, Transaction
from storage.vault import Vault

log = logging.getLogger("cxrd.ingest")


class Ingest:
    """Holds what every C-STORE needs (keys, vault, database, rules); `store` is called from many
    association threads at once and is safe for that."""

    def __init__(self, *, engine: Engine, read_sessions: sessionmaker[Session], vault: Vault, keys: Keys,
                 deid: DeidOptions,
                 chest: ChestRule, non_chest: str, min_free_mb: int, hostname: str = "",
                 unknown_view: str = "analyse",
                 max_pixels: int = 64 * 1024 * 1024,
                 observe: Callable[[str, float, int], None] | None = None, max_writers: int = 8):
        self.rows = IngestRows(engine, keys.audit_key)  # the C-STORE transaction, on the driver's cursor
        self._audit_after_write = engine.dialect.name != "sqlite"
        self.read_sessions = read_sessions
        self.vault = vault
        self.keys = keys
        self.deid = deid
        self.chest = chest
        self.unknown_view = unknown_view
        self.max_pixels = max_pixels
        self.non_chest = non_chest
        self.min_free_bytes = min_free_mb * 1024 * 1024
        self.hostname = hostname
        # One vault write in flight per association at most; a pool avoids a thread start per image.
        self._writer = ThreadPoolExecutor(max_workers=max(2, max_writers), thread_name_prefix="cxrd-vault-write")
        self.observe = observe or (lambda outcome, seconds, nbytes: None)

    def disk_is_low(self) -> bool:
        """True while the vault's filesystem is below the free-space floor (or cannot be asked):
        new images are refused with OUT_OF_RESOURCES until space is freed."""
        try:
            free = shutil.disk_usage(self.vault.root).free
        except OSError:
            free = 0
        return free < self.min_free_bytes

    # -- the C-STORE path --------------------------------------------------------------------------
    def store(self, ds: Dataset, file_meta: Dataset | None, calling_aet: str, host: str) -> int:
        """The DICOM status for one received dataset; never raises (an association thread must not die)."""
        t0 = time.perf_counter()
        outcome, nbytes = statuses.FAILED, 0
        try:
            outcome, nbytes = self._store(ds, file_meta, calling_aet, host)
        except StoreConflict as exc:
            event(log, "store.refused", logging.ERROR, reason=str(exc), calling_aet=calling_aet)
        except DatabaseUnavailable:
            outcome = statuses.REFUSED_DATABASE
            event(log, "store.refused", logging.ERROR, reason="database unavailable", calling_aet=calling_aet)
        except Exception as exc:  # never log values (PHI)
            log.error("store.crashed", exc_info=exc, extra={"cxrd_fields": {"calling_aet": calling_aet}})
        self.observe(outcome.label, time.perf_counter() - t0, nbytes)
        return outcome.status

    def _store(self, ds: Dataset, file_meta: Dataset | None, calling_aet: str,
               host: str) -> tuple[statuses.Outcome, int]:
        """The checks in the documented order, then the durable write; (outcome, bytes written)."""
        actor = {"actor": f"aet:{calling_aet}", "host": host}
        if file_meta is not None:
            ds.file_meta = file_meta
        transfer_syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        verdict = is_chest_radiograph(ds, self.chest)
        if not verdict.chest:
            return self._not_chest(verdict, calling_aet, actor), 0
        view = decide_view(ds, self.unknown_view)  # before de-identification removes the descriptions
        problem = pixel_problem(ds, self.max_pixels)
        if problem is not None:
            self._audit_only("instance.failed", outcome=4, details={"reason": problem}, **actor)
            event(log, "store.pixels_refused", logging.WARNING, reason=problem, calling_aet=calling_aet)
            return statuses.REFUSED_PIXELS, 0
        if self.disk_is_low():
            return self._refuse_low_disk(calling_aet, actor), 0
        refusal = burned_in_refusal(ds, self.deid)
        if refusal is not None:
            self._audit_only("instance.failed", outcome=4, details={"reason": refusal}, **actor)
            event(log, "store.burned_in_refused", logging.WARNING, reason=refusal, calling_aet=calling_aet)
            return statuses.REFUSED_BURNED_IN, 0
        try:
            result = deidentify(ds, self.keys.deid, self.deid)
        except DeidError as exc:
            self._audit_only("instance.failed", outcome=4, details={"reason": str(exc)}, **actor)
            event(log, "store.cannot_deidentify", logging.WARNING, error=str(exc), calling_aet=calling_aet)
            return statuses.UNDEIDENTIFIABLE, 0
        return self._persist(ds, result, view, transfer_syntax, calling_aet, actor)

    def _not_chest(self, verdict: Verdict, calling_aet: str, actor: dict[str, str]) -> statuses.Outcome:
        """Acknowledged and dropped, or rejected (dicom.non_chest); audited either way, nothing stored."""
        ignore = self.non_chest == "ignore"
        self._audit_only("instance.ignored" if ignore else "instance.rejected", outcome=0 if ignore else 4,
                         details={"reason": verdict.reason, "sop_class": verdict.sop_class}, **actor)
        event(log, "store.not_chest", reason=verdict.reason, action=self.non_chest, calling_aet=calling_aet)
        return statuses.IGNORED if ignore else statuses.REJECTED

    def _refuse_low_disk(self, calling_aet: str, actor: dict[str, str]) -> statuses.Outcome:
        self._audit_only("instance.failed", outcome=8, details={"reason": "disk below free-space floor"}, **actor)
        event(log, "store.refused", logging.ERROR, reason="disk below free-space floor", calling_aet=calling_aet)
        return statuses.REFUSED_DISK

    def _persist(self, ds: Dataset, result: DeidResult, view: ViewDecision, transfer_syntax: str,
                 calling_aet: str, actor: dict[str, str]) -> tuple[statuses.Outcome, int]:
        """Write the vault object and commit its rows in one transaction; STORED only once both are
        durable. The write (encrypt + write + fsync) runs beside the statements; the commit waits."""
        sop = result.sop_instance_uid
        try:
            parts = file_parts(result.dataset)  # Part 10 bytes; the pixel data is not copied
        except UnwritableDataset as exc:
            self._audit_only("instance.failed", outcome=4, details={"reason": str(exc)}, **actor)
            event(log, "store.unwritable", logging.WARNING, reason=str(exc), calling_aet=calling_aet)
            return statuses.UNPARSEABLE, 0
        size = sum(len(p) for p in parts)
        try:
            object_id = self.vault.reserve()  # unique per attempt; its directory entry is already durable
        except VaultError as exc:
            event(log, "store.vault_failed", logging.ERROR, error=str(exc), calling_aet=calling_aet)
            return statuses.REFUSED_DISK, 0
        write = self._writer.submit(self.vault.put_reserved, object_id, parts)
        durable = False
        try:
            with self.rows.transaction() as tx:
                self._insert_instance(tx, ds, result, view, transfer_syntax, object_id, size, calling_aet)
                # On PostgreSQL the audit append takes the chain's lock, which no other association
                # should wait on during our fsync: wait for the object first. SQLite's one write
                # lock is held from the first statement anyway, so there the audit row overlaps too.
                if self._audit_after_write:
                    nbytes, durable = write.result(), True  # VaultError here rolls the transaction back
                tx.audit_event(event_type="instance.stored", study_uid=result.study_uid, object_uid=sop,
                               details={"bytes": size, "transfer_syntax": transfer_syntax,
                                        "deid": result.applied_codes, "deid_edition": PROFILE_EDITION,
                                        "burned_in": result.burned_in, "analysed": view.analyse,
                                        "view": view.view, "analysis_reason": view.reason},
                               **actor)
                if not self._audit_after_write:
                    nbytes, durable = write.result(), True
        except DatabaseUnavailable:
            if not durable:  # else the commit's outcome is unknown: as below
                self._discard_after(write, object_id)
            raise
        except RowConflict:
            self._discard_after(write, object_id)
            return self._duplicate_or_conflict(result, actor), 0
        except VaultError as exc:
            self._discard_after(write, object_id)
            event(log, "store.vault_failed", logging.ERROR, error=str(exc), calling_aet=calling_aet)
            return statuses.REFUSED_DISK, 0
        except BaseException:
            # Once the object is durable, a failure can only come from the commit, whose outcome may
            # be unknown (connection lost after COMMIT was sent): keep the object then. If the rows
            # did not land, the orphan sweep shreds it at the next start.
            if not durable:
                self._discard_after(write, object_id)
            raise
        if not view.analyse:
            event(log, "store.not_analysed", view=view.view, calling_aet=calling_aet)
        return statuses.STORED, nbytes

    def _insert_instance(self, tx: Transaction, ds: Dataset, result: DeidResult, view: ViewDecision,
                         transfer_syntax: str, object_id: str, size: int, calling_aet: str) -> None:
        """The instance row, its prediction job (only if the model is to see it) and its sealed
        re-identification entry."""
        sop = result.sop_instance_uid
        instance_id = tx.instance(
            sop_instance_uid=sop, study_uid=result.study_uid, series_uid=result.series_uid,
            sop_class_uid=result.sop_class_uid, modality=str(ds.get("Modality", ""))[:16],
            view_position=str(ds.get("ViewPosition", ""))[:16], transfer_syntax=transfer_syntax,
            state=RECEIVED if view.analyse else NOT_ANALYSED, view=view.view,
            analysis_reason=view.reason[:240], vault_object=object_id, size_bytes=size,
            burned_in_annotation=result.burned_in, calling_aet=calling_aet[:16],
            accession_hash=accession_key(self.keys.uid_key, result.original.get("accession_number", "")))
        if view.analyse:
            tx.job(instance_id=instance_id, kind="predict")
        tx.reid_entry(sop_instance_uid=sop, study_uid=result.study_uid,
                      sealed=reid.seal_reid(self.keys.reid_key, sop, result.original))

    def _duplicate_or_conflict(self, result: DeidResult, actor: dict[str, str]) -> statuses.Outcome:
        """A unique constraint refused the rows. Only an already stored SOP Instance UID (sent again, or
        a concurrent copy committed first) is a success: one object, one job. Anything else is a
        failure, audited and raised as StoreConflict, never reported as stored."""
        sop = result.sop_instance_uid
        if not self._already_stored(sop):
            reason = "a database constraint refused the instance (not a duplicate)"
            with contextlib.suppress(Exception):
                self._audit_only("instance.failed", outcome=8, study_uid=result.study_uid, object_uid=sop,
                                 details={"reason": reason}, **actor)
            raise StoreConflict(reason) from None
        self._audit_only("instance.duplicate", study_uid=result.study_uid, object_uid=sop, **actor)
        return statuses.DUPLICATE

    # -- helpers -----------------------------------------------------------------------------------
    def _already_stored(self, sop: str) -> bool:
        with _guarded(self.read_sessions) as session:
            return session.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop)) is not None

    def _audit_only(self, event_type: str, **fields) -> None:  # noqa: ANN003
        """An outcome that stores nothing (ignored, rejected, duplicate, failed), audited on its own."""
        self.rows.audit(event_type=event_type, **fields)

    def audit_association(self, calling_aet: str, host: str) -> None:
        """An accepted association, audited before its first request is served: on the driver's
        cursor like the rest of the C-STORE path, which is much cheaper than through the ORM."""
        self.rows.audit(event_type="association.accepted", actor=f"aet:{calling_aet}", host=host)

    def _discard_after(self, write: Future, object_id: str) -> None:
        """Shred this attempt's object once its write has finished (never while it is being written)."""
        wait([write])
        self._discard(object_id)

    def _discard(self, object_id: str) -> None:
        try:
            self.vault.delete(object_id)
        except Exception as exc:  # the orphan sweep at next start removes it
            log.error("store.discard_failed", exc_info=exc)


class StoreConflict(Exception):
    """A constraint other than the SOP Instance UID's refused the rows: statuses.FAILED."""


class _guarded:
    """A session whose connection-level failures surface as DatabaseUnavailable."""

    def __init__(self, factory: sessionmaker[Session]):
        self.session = factory()

    def __enter__(self) -> Session:
        return self.session

    def __exit__(self, exc_type, exc, tb) -> bool:  # noqa: ANN001
        self.session.close()
        if isinstance(exc, (OperationalError, InterfaceError)):
            raise DatabaseUnavailable(f"database unavailable ({type(exc).__name__})") from None
        return False


def sweep_orphans(sessions: sessionmaker[Session], vault: Vault, older_than_s: float = 600.0) -> int:
    """Shred vault objects no instance or report row points at (a crash between write and commit),
    leaving recent ones alone because another daemon sharing the vault may be about to commit them."""
    with sessions() as session:
        referenced = set(session.scalars(select(Instance.vault_object).where(Instance.vault_object.is_not(None))))
        referenced |= referenced_text_objects(session)
    cutoff = time.time() - older_than_s
    removed = 0
    for object_id in list(vault.object_ids()):
        if object_id in referenced:
            continue
        try:
            if Path(vault.path(object_id)).stat().st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        vault.delete(object_id)
        removed += 1
    return removed
