"""The worker: claim queued jobs, decrypt, preprocess, infer in batches, record predictions.

It meets ingest only through the `jobs` table. Claims are leases (`daemon.stages.leases`): a job is
`running` with the claimer's id and time, and a claim whose holder died is taken back. On PostgreSQL
the claim query uses `FOR UPDATE SKIP LOCKED`, so several workers and several daemons never take the
same job; on SQLite the write lock taken by BEGIN IMMEDIATE serialises claimers. Predictions are
unique per (instance, model version, label), so a batch replayed after a crash never writes twice.

Three threads form a pipeline: claim + decrypt + decode + preprocess, then the forward pass (the
bottleneck), then the database writes, so the forward pass never waits on vault reads, JPEG 2000
decoding, resizing or commits. In `cxrd serve` ingest wakes the claimer as soon as it commits a job;
polling is only for jobs committed by other daemons. After committing predictions the worker asks
the results stage for a report of each study (`daemon.stages.results.schedule_result`).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import torch
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from cxrmodel.engine import Engine
from cxrmodel.errors import ModelError, NoModelError
from cxrmodel.labels import LABELS
from cxrmodel.registry import LoadedModel, Registry
from daemon.ops.logs import event
from daemon.stages.leases import release_dead_claims, worker_id
from daemon.stages.results import schedule_result
from storage import audit
from storage.errors import StorageError, TamperError
from storage.keys import Keys
from storage.models import FAILED, PREDICTED, QUARANTINED, RECEIVED, Instance, Job, Prediction, utcnow
from storage.vault import Vault

log = logging.getLogger("cxrd.worker")

MAX_ATTEMPTS = 3
IDLE_POLL_S = 0.2


@dataclass(frozen=True)
class EngineSettings:
    backend: str = "auto"
    threads: int = 0
    batch_size: int = 8
    max_batch_wait_ms: int = 50


def claim_jobs(session: Session, me: str, limit: int) -> list[int]:
    """Claim up to `limit` queued jobs in the caller's transaction; returns their ids."""
    now = utcnow()
    stmt = (select(Job.id).where(Job.state == "queued", Job.kind == "predict", Job.not_before <= now)
            .order_by(Job.id).limit(limit))
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    ids = list(session.scalars(stmt))
    if ids:
        session.execute(update(Job).where(Job.id.in_(ids))
                        .values(state="running", claimed_by=me, claimed_at=now, attempts=Job.attempts + 1))
    return ids


@dataclass
class Prepared:
    job_id: int
    instance_id: int
    sop_uid: str
    study_uid: str
    tensor: torch.Tensor | None
    error: str = ""
    quarantine: bool = False
    attempts: int = 0
    received_at: datetime | None = None
    object_id: str | None = None
    version: str = ""  # the model whose preprocessing made `tensor`


class Worker:
    """One claimer/preprocessor thread feeding one inference thread; `start`/`stop`/`healthy`."""

    name = "worker"

    def __init__(self, *, sessions: sessionmaker[Session], vault: Vault, keys: Keys, registry: Registry,
                 engine_settings: EngineSettings, results_enabled: bool, audit_host: str = "",
                 observe: Callable[[float, int], None] | None = None):
        self.sessions = sessions
        self.vault = vault
        self.keys = keys
        self.registry = registry
        self.engine_settings = engine_settings
        self.results_enabled = results_enabled
        self.audit_host = audit_host
        self.me = worker_id()
        self.observe = observe or (lambda latency_s, n: None)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._claimed = 0  # images claimed by the prepare stage and not yet handed to the forward
        self._carry: list[Prepared] = []
        self._ready: queue.Queue[list[Prepared] | None] = queue.Queue(maxsize=2)
        self._done: queue.Queue[tuple] = queue.Queue(maxsize=2)
        self._threads: list[threading.Thread] = []
        self._model: LoadedModel | None = None
        self._engine: Engine | None = None
        self._model_lock = threading.Lock()
        self.last_beat = time.monotonic()
        self.waiting_for_model = False

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        released = release_dead_claims(self.sessions, self.me)
        if released:
            event(log, "worker.reclaimed", jobs=released)
        self._threads = [threading.Thread(target=self._guard(self._prepare_loop), name="cxrd-prepare", daemon=True),
                         threading.Thread(target=self._guard(self._infer_loop), name="cxrd-infer", daemon=True),
                         threading.Thread(target=self._guard(self._record_loop), name="cxrd-record", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=60)
        if self._engine is not None:
            self._engine.close()

    def wake(self) -> None:
        """A job was just committed in this process: claim it now rather than at the next poll.
        (Polling stays, for jobs committed by other daemons on a shared database.)"""
        self._wake.set()

    def healthy(self) -> bool:
        return all(t.is_alive() for t in self._threads) and time.monotonic() - self.last_beat < 120

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    loop()
                    return
                except Exception as exc:  # log, back off, keep the stage alive
                    log.error("worker.loop_failed", exc_info=exc)
                    self._stop.wait(2.0)
        return run

    # -- model -------------------------------------------------------------------------------------
    def current_model(self) -> LoadedModel | None:
        """The promoted model, reloaded when the current pointer changes; None while there is none."""
        try:
            version = self.registry.current_version()
        except NoModelError:
            if not self.waiting_for_model:
                event(log, "worker.no_model", logging.WARNING,
                      hint="studies stay queued until a model is promoted (cxrd train / cxrd model import)")
            self.waiting_for_model = True
            return None
        with self._model_lock:
            if self._model is None or self._model.version != version:
                loaded = self.registry.load(version)
                es = self.engine_settings
                engine = Engine.for_model(loaded, backend=es.backend, threads=es.threads,
                                          batch_size=es.batch_size, max_batch_wait_ms=es.max_batch_wait_ms)
                old = self._engine
                self._model, self._engine = loaded, engine
                if old is not None:
                    old.close()
                event(log, "worker.model_loaded", version=version, backend=engine.backend)
            self.waiting_for_model = False
            return self._model

    # -- stage 1: claim, decrypt, preprocess -------------------------------------------------------
    def _prepare_loop(self) -> None:
        while not self._stop.is_set():
            self.last_beat = time.monotonic()
            model = self.current_model()
            if model is None:
                self._stop.wait(1.0)
                continue
            self._wake.clear()
            if self._stop.is_set():
                return
            with self.sessions() as session, session.begin():
                ids = claim_jobs(session, self.me, self.engine_settings.batch_size)
                rows = session.execute(
                    select(Job.id, Job.attempts, Instance.id, Instance.sop_instance_uid, Instance.study_uid,
                           Instance.vault_object, Instance.received_at)
                    .join(Instance, Instance.id == Job.instance_id).where(Job.id.in_(ids))).all() if ids else []
            if not rows:
                self._wake.wait(IDLE_POLL_S)
                continue
            self._claimed = len(rows)
            try:
                batch = [self._prepare_one(model, *row) for row in rows]
            finally:
                self._claimed = 0  # before the put: a forward must never wait on a claim already queued
            # Claimed jobs are always handed on (the infer loop runs until this thread has ended),
            # never dropped at stop: a dropped claim would sit `running` until the next start.
            self._ready.put(batch)

    def _prepare_one(self, model: LoadedModel, job_id: int, attempts: int, instance_id: int, sop: str,
                     study: str, object_id: str | None, received_at: datetime) -> Prepared:
        p = Prepared(job_id, instance_id, sop, study, None, attempts=attempts, received_at=received_at,
                     object_id=object_id, version=model.version)
        try:
            if object_id is None:
                raise StorageError("instance has no stored object")
            p.tensor = model.preprocess(self.vault.get(object_id))
        except TamperError as exc:
            p.error, p.quarantine = str(exc), True
        except (StorageError, ModelError) as exc:
            p.error = str(exc)
        except Exception as exc:  # a decoder crash on one image must not stop the others
            p.error = f"cannot read image ({type(exc).__name__})"
        return p

    # -- stage 2: infer and record -----------------------------------------------------------------
    def _infer_loop(self) -> None:
        preparing = next(t for t in self._threads if t.name == "cxrd-prepare")
        while not self._stop.is_set() or not self._ready.empty() or self._carry or preparing.is_alive():
            batch = self._next_batch()
            if not batch:
                continue
            self.last_beat = time.monotonic()
            model, engine = self._model, self._engine
            if batch[0].version != model.version:  # a model was promoted while these waited
                batch = [self._prepare_one(model, p.job_id, p.attempts, p.instance_id, p.sop_uid, p.study_uid,
                                           p.object_id, p.received_at) if p.tensor is not None else p
                         for p in batch]
            good = [p for p in batch if p.tensor is not None]
            try:
                probs = engine.predict(torch.stack([p.tensor for p in good])) if good else []
            except Exception as exc:  # the jobs go back to the queue (with backoff), not lost
                log.error("worker.inference_failed", exc_info=exc)
                for p in good:
                    p.tensor, p.error = None, f"inference failed ({type(exc).__name__})"
                good, probs = [], []
            self._done.put((model, good, probs, [p for p in batch if p.tensor is None]))

    def _next_batch(self) -> list[Prepared]:
        """Up to `batch_size` prepared images: the first claim waited for, then whatever else is ready.

        Claims are as small as what was queued at that instant (one image at idle, so its latency is
        one forward). Under load several small claims wait here together; merging them keeps the
        forward at full batches, where DenseNet on CPU does ~1.4x more images per second than at 1-4.
        A short batch waits (up to `max_batch_wait_ms`) only for images already claimed and being
        prepared, a few ms each: at the start of a 200-image burst, forwards of 1, 2, 3 and 7 images
        took 0.84 s for 13 images, where full batches do 13 in 0.52 s. Waiting instead for images
        merely expected (arrivals in the last 50 ms) idled the forward 50 ms at a time and still
        ran batches of 3-6, because claiming and preparing is what paces the queue then.
        """
        size = self.engine_settings.batch_size
        batch, self._carry = self._carry, []
        if not batch:
            try:
                batch = list(self._ready.get(timeout=0.5))
            except queue.Empty:
                return []
        window = self.engine_settings.max_batch_wait_ms / 1000.0
        deadline = None
        while len(batch) < size:
            try:
                batch.extend(self._ready.get_nowait())
                continue
            except queue.Empty:
                if not self._claimed:
                    break
            deadline = deadline or time.monotonic() + window
            try:
                batch.extend(self._ready.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        limit = min(size, len(batch))
        # never mix two models' preprocessing in one forward (a promotion while claims wait)
        cut = next((i for i in range(limit) if batch[i].version != batch[0].version), limit)
        batch, self._carry = batch[:cut], batch[cut:]
        return batch

    def _record_loop(self) -> None:
        """Database writes of one batch overlap the next batch's forward pass."""
        while not self._stop.is_set() or not self._done.empty() or any(
                t.is_alive() for t in self._threads if t.name == "cxrd-infer"):
            try:
                item = self._done.get(timeout=0.5)
            except queue.Empty:
                continue
            self._record(*item)

    def _record(self, model: LoadedModel, good: list[Prepared], probs, bad: list[Prepared]) -> None:  # noqa: ANN001
        version = model.version
        thresholds = model.manifest.threshold_list()
        now = utcnow()
        with self.sessions() as session, session.begin():
            # Core statements, one per kind of row for the whole batch: this runs beside the next
            # forward pass on a two-core machine, so its CPU is taken from the model.
            conn = session.connection()
            ids = [p.instance_id for p in good]
            already = set(conn.scalars(select(Prediction.instance_id).distinct().where(
                Prediction.instance_id.in_(ids), Prediction.model_version == version))) if ids else set()
            rows = []
            for p, row in zip(good, probs):
                if p.instance_id in already:  # recorded before a crash: never twice per model version
                    continue
                rows.extend({"instance_id": p.instance_id, "model_version": version, "label": label,
                             "probability": float(prob), "threshold": float(t), "positive": bool(prob >= t),
                             "created_at": now}
                            for label, prob, t in zip(LABELS, row, thresholds))
                positives = [label for label, prob, t in zip(LABELS, row, thresholds) if prob >= t]
                audit.append(session, self.keys.audit_key, event_type="prediction.created",
                             actor="cxrd:worker", host=self.audit_host, study_uid=p.study_uid,
                             object_uid=p.sop_uid, details={"model": version, "positive": positives})
            if rows:
                conn.execute(insert(Prediction.__table__), rows)
            if good:
                conn.execute(update(Instance.__table__).where(Instance.id.in_(ids), Instance.state == RECEIVED)
                             .values(state=PREDICTED, updated_at=now))
                conn.execute(update(Job.__table__).where(Job.id.in_([p.job_id for p in good]))
                             .values(state="done", last_error=""))
            studies = {p.study_uid for p in good}
            for p in bad:
                final = p.quarantine or p.attempts >= MAX_ATTEMPTS
                session.execute(update(Job).where(Job.id == p.job_id).values(
                    state="failed" if final else "queued", claimed_by="", claimed_at=None,
                    last_error=p.error[:500], not_before=now + timedelta(seconds=30 * p.attempts)))
                if final:
                    session.execute(update(Instance).where(Instance.id == p.instance_id)
                                    .values(state=QUARANTINED if p.quarantine else FAILED, error=p.error[:500],
                                            updated_at=now))
                    audit.append(session, self.keys.audit_key,
                                 event_type="security.tamper" if p.quarantine else "instance.failed",
                                 outcome=12 if p.quarantine else 8, actor="cxrd:worker", host=self.audit_host,
                                 study_uid=p.study_uid, object_uid=p.sop_uid, details={"error": p.error[:200]})
            if self.results_enabled:
                for study in studies:
                    schedule_result(session, study, version)
        for p in good:
            if p.received_at is not None:
                self.observe((now - p.received_at).total_seconds(), 1)
        if good:
            event(log, "worker.predicted", images=len(good), failed=len(bad), model=version)
        elif bad:
            event(log, "worker.failed", logging.WARNING, images=len(bad))
