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
the results stage for a report of each study (`daemon.stages.results.schedule_result`). A shadow
candidate, when one is chosen, runs on each batch after the current model and its rows are stored
apart, never sent (`daemon.stages.shadow`).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Sequence

import torch
from sqlalchemy import exists, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from cxrmodel.engine import Engine
from cxrmodel.errors import ModelError, NoModelError
from cxrmodel.labels import LABELS
from cxrmodel.registry import LoadedModel, Registry
from daemon.ops.logs import event, mask
from daemon.stages import input_profile
from daemon.stages.leases import release_dead_claims, worker_id
from daemon.stages.results import schedule_result
from daemon.stages.shadow import ShadowBatch, ShadowRunner
from storage import audit, records
from storage.dicomfile import checked_instance
from storage.errors import StorageError, TamperError
from storage.keys import Keys
from storage.models import (FAILED, NOT_ANALYSED, PREDICTED, QUARANTINED, RECEIVED, Instance, Job, Prediction,
                            utcnow)
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
    # Ingest queues no job for an image the model must not see (a lateral view); should one exist
    # anyway, it is never claimed. The subquery locks nothing: SKIP LOCKED applies to `jobs` only.
    not_analysed = exists().where(Instance.id == Job.instance_id, Instance.state == NOT_ANALYSED)
    stmt = (select(Job.id).where(Job.state == "queued", Job.kind == "predict", Job.not_before <= now,
                                 ~not_analysed)
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
    error_class: str = ""  # the exception's type name: what kind of failure, for the log and audit
    quarantine: bool = False
    attempts: int = 0
    received_at: datetime | None = None
    object_id: str | None = None
    version: str = ""  # the model whose preprocessing made `tensor`
    profile: dict | None = None  # the image's input characteristics (daemon.stages.input_profile)
    view: str = ""  # the view rule's decision at ingest (instances.view), stored with the profile


@dataclass
class Forwarded:
    """One forward's outcome, handed from the inference thread to the record thread."""
    model: LoadedModel
    good: list[Prepared]  # predicted, in the order of `probs`
    probs: Sequence       # one row of label probabilities per image of `good`
    bad: list[Prepared]   # not predicted; each `error` says why


def is_final(p: Prepared) -> bool:
    """No further attempt: a tampered object is never retried, anything else `MAX_ATTEMPTS` times."""
    return p.quarantine or p.attempts >= MAX_ATTEMPTS


def retry_delay_s(p: Prepared) -> int:
    return 30 * p.attempts


def log_failure(p: Prepared, model: str) -> None:
    """One line per image that was not predicted: which (pseudonymous) instance, what kind of failure,
    what happens next. The message is masked like a library's: it may quote a library's words."""
    final = is_final(p)
    event(log, "worker.failed", logging.ERROR if final else logging.WARNING,
          instance=p.sop_uid, study=p.study_uid, attempt=p.attempts, max_attempts=MAX_ATTEMPTS,
          then=(QUARANTINED if p.quarantine else FAILED) if final else f"retry in {retry_delay_s(p)} s",
          reason_class=p.error_class or "unknown", reason=mask(p.error[:300]), model=model)


def one_model_batch(images: list[Prepared], size: int) -> tuple[list[Prepared], list[Prepared]]:
    """The first `size` images, cut short where the model changes; the rest carries over.

    One forward never mixes two models' preprocessing (a model promoted while claims waited).
    """
    limit = min(size, len(images))
    cut = next((i for i in range(limit) if images[i].version != images[0].version), limit)
    return images[:cut], images[cut:]


class BatchFormer:
    """Prepared claims in (from the prepare thread), forward batches out (to the inference thread).

    Claims are as small as what was queued at that instant: one image at idle, so its latency is one
    forward. Under load several small claims wait here together; merging them keeps the forward at
    full batches, which do more images per second than batches of a few. A short batch waits (up to
    `max_wait_s`) only for images already claimed and being prepared, a few ms each, never for images
    merely expected: claiming and preparing is what paces the queue then, so such a wait would only
    idle the forward and still yield short batches.
    """

    def __init__(self, batch_size: int, max_wait_s: float):
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.ready: queue.Queue[list[Prepared]] = queue.Queue(maxsize=2)
        self.claimed = 0  # images claimed by the prepare thread and not yet handed on
        self._carry: list[Prepared] = []

    def empty(self) -> bool:
        """Nothing handed on is still waiting for a forward."""
        return self.ready.empty() and not self._carry

    def next_batch(self, timeout_s: float = 0.5) -> list[Prepared]:
        """Up to `batch_size` images of one model: the first claim waited for (up to `timeout_s`),
        then what else is ready; [] when nothing came."""
        images, self._carry = self._carry, []
        if not images:
            try:
                images = list(self.ready.get(timeout=timeout_s))
            except queue.Empty:
                return []
        self._top_up(images)
        batch, self._carry = one_model_batch(images, self.batch_size)
        return batch

    def _top_up(self, images: list[Prepared]) -> None:
        """Add claims already handed on; wait for more only while the prepare thread holds some."""
        deadline = None
        while len(images) < self.batch_size:
            try:
                images.extend(self.ready.get_nowait())
                continue
            except queue.Empty:
                if not self.claimed:
                    return
            deadline = deadline or time.monotonic() + self.max_wait_s
            try:
                images.extend(self.ready.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                return


class Worker:
    """One claimer/preprocessor thread feeding one inference thread feeding one record thread;
    `start`/`stop`/`healthy`."""

    name = "worker"

    def __init__(self, *, sessions: sessionmaker[Session], vault: Vault, keys: Keys, registry: Registry,
                 engine_settings: EngineSettings, results_enabled: bool, audit_host: str = "",
                 observe: Callable[[float], None] | None = None):
        self.sessions = sessions
        self.vault = vault
        self.keys = keys
        self.registry = registry
        self.engine_settings = engine_settings
        self.results_enabled = results_enabled
        self.audit_host = audit_host
        self.me = worker_id()
        self.observe = observe or (lambda latency_s: None)  # receipt to prediction committed, per image
        self.batches = BatchFormer(engine_settings.batch_size, engine_settings.max_batch_wait_ms / 1000.0)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._done: queue.Queue[Forwarded | ShadowBatch] = queue.Queue(maxsize=2)
        self._threads: list[threading.Thread] = []
        self._model: LoadedModel | None = None
        self._engine: Engine | None = None
        self._model_lock = threading.Lock()
        self.last_beat = time.monotonic()
        self.waiting_for_model = False
        self.shadow = ShadowRunner(registry=registry, sessions=sessions, keys=keys, audit_host=audit_host,
                                   backend=lambda: self._engine.backend if self._engine is not None else "fp32",
                                   threads=engine_settings.threads, batch_size=engine_settings.batch_size)

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
        self.shadow.close()
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

    def _thread_alive(self, name: str) -> bool:
        return any(t.is_alive() for t in self._threads if t.name == name)

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
                # Queued studies wait while this runs (with backend "auto", a first load measures the
                # backends): the log says when it starts, and when it is done.
                started = time.monotonic()
                es = self.engine_settings
                event(log, "worker.model_loading", version=version, backend=es.backend)
                loaded = self.registry.load(version)
                engine = Engine.for_model(loaded, backend=es.backend, threads=es.threads,
                                          batch_size=es.batch_size, max_batch_wait_ms=es.max_batch_wait_ms)
                old = self._engine
                self._model, self._engine = loaded, engine
                if old is not None:
                    old.close()
                event(log, "worker.model_loaded", version=version, backend=engine.backend,
                      seconds=round(time.monotonic() - started, 1))
            self.waiting_for_model = False
            return self._model

    # -- thread 1: claim, decrypt, preprocess ------------------------------------------------------
    def _prepare_loop(self) -> None:
        while not self._stop.is_set():
            self.last_beat = time.monotonic()
            model = self.current_model()
            if model is None:
                self._stop.wait(1.0)
                continue
            self.shadow.refresh()
            self._wake.clear()
            if self._stop.is_set():
                return
            with self.sessions() as session, session.begin():
                ids = claim_jobs(session, self.me, self.engine_settings.batch_size)
                rows = session.execute(
                    select(Job.id, Job.attempts, Instance.id, Instance.sop_instance_uid, Instance.study_uid,
                           Instance.vault_object, Instance.received_at, Instance.view)
                    .join(Instance, Instance.id == Job.instance_id).where(Job.id.in_(ids))).all() if ids else []
            if not rows:
                self._wake.wait(IDLE_POLL_S)
                continue
            self.batches.claimed = len(rows)
            try:
                claim = [self._prepare_one(model, *row) for row in rows]
            finally:
                self.batches.claimed = 0  # before the put: a forward must never wait on a claim already queued
            # Claimed jobs are always handed on (the infer loop runs until this thread has ended),
            # never dropped at stop: a dropped claim would sit `running` until the next start.
            self.batches.ready.put(claim)

    def _prepare_one(self, model: LoadedModel, job_id: int, attempts: int, instance_id: int, sop: str,
                     study: str, object_id: str | None, received_at: datetime, view: str) -> Prepared:
        p = Prepared(job_id, instance_id, sop, study, None, attempts=attempts, received_at=received_at,
                     object_id=object_id, version=model.version, view=view)
        try:
            if object_id is None:
                raise StorageError("instance has no stored object")
            p.tensor, p.profile = input_profile.preprocess(model, checked_instance(self.vault.get(object_id), sop,
                                                                                   object_id))
        except TamperError as exc:
            p.error, p.error_class, p.quarantine = str(exc), type(exc).__name__, True
        except (StorageError, ModelError) as exc:
            p.error, p.error_class = str(exc), type(exc).__name__
        except Exception as exc:  # a decoder crash on one image must not stop the others
            p.error, p.error_class = f"cannot read image ({type(exc).__name__})", type(exc).__name__
        return p

    # -- thread 2: the forward pass ----------------------------------------------------------------
    def _infer_loop(self) -> None:
        while not self._stop.is_set() or not self.batches.empty() or self._thread_alive("cxrd-prepare"):
            batch = self.batches.next_batch()
            if not batch:
                continue
            self.last_beat = time.monotonic()
            model, engine = self._model, self._engine
            if batch[0].version != model.version:  # a model was promoted while these waited
                batch = [self._prepare_one(model, p.job_id, p.attempts, p.instance_id, p.sop_uid, p.study_uid,
                                           p.object_id, p.received_at, p.view) if p.tensor is not None else p
                         for p in batch]
            good = [p for p in batch if p.tensor is not None]
            stacked = torch.stack([p.tensor for p in good]) if good else None
            try:
                probs = engine.predict(stacked) if good else []
            except Exception as exc:  # the jobs go back to the queue (with backoff), not lost
                log.error("worker.inference_failed", exc_info=exc)
                for p in good:
                    p.tensor, p.error = None, f"inference failed ({type(exc).__name__})"
                    p.error_class = type(exc).__name__
                good, probs = [], []
            self._done.put(Forwarded(model, good, probs, [p for p in batch if p.tensor is None]))
            # After the current model's rows are handed on, so the shadow never delays them.
            shadowed = self.shadow.forward(model, stacked, good) if good else None
            if shadowed is not None:
                self._done.put(shadowed)

    # -- thread 3: the database writes -------------------------------------------------------------
    def _record_loop(self) -> None:
        """Database writes of one batch overlap the next batch's forward pass."""
        while not self._stop.is_set() or not self._done.empty() or self._thread_alive("cxrd-infer"):
            try:
                done = self._done.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(done, ShadowBatch):
                self.shadow.record(done)
                continue
            self._record(done)

    def _record(self, done: Forwarded) -> None:
        """One transaction per batch: predictions, failures, and the result each study now needs."""
        now = utcnow()
        with self.sessions() as session, session.begin():
            self._record_predictions(session, done.model, done.good, done.probs, now)
            self._record_failures(session, done.bad, now)
            if self.results_enabled:
                for study in {p.study_uid for p in done.good}:
                    schedule_result(session, study, done.model.version)
        for p in done.good:
            if p.received_at is not None:
                self.observe((now - p.received_at).total_seconds())
        if done.good:
            event(log, "worker.predicted", images=len(done.good), failed=len(done.bad), model=done.model.version)
        for p in done.bad:
            log_failure(p, done.model.version)

    def _record_predictions(self, session: Session, model: LoadedModel, good: list[Prepared], probs: Sequence,
                            now: datetime) -> None:
        """Prediction rows and one audit event per image, then the instances and jobs marked done.

        Core statements, one per kind of row for the whole batch: this runs beside the next forward
        pass, so its CPU is taken from the model.
        """
        if not good:
            return
        version = model.version
        thresholds = model.manifest.threshold_list()
        conn = session.connection()
        ids = [p.instance_id for p in good]
        already = set(conn.scalars(select(Prediction.instance_id).distinct().where(
            Prediction.instance_id.in_(ids), Prediction.model_version == version)))
        rows = []
        for p, row in zip(good, probs):
            if p.instance_id in already:  # recorded before a crash: never twice per model version
                continue
            rows.extend({"instance_id": p.instance_id, "model_version": version, "label": label,
                         "probability": float(prob), "threshold": float(t), "positive": bool(prob >= t),
                         "created_at": now,
                         "mac": records.mac(self.keys.record_key, p.sop_uid, version, label, float(prob),
                                            float(t), bool(prob >= t))}
                        for label, prob, t in zip(LABELS, row, thresholds))
            positives = [label for label, prob, t in zip(LABELS, row, thresholds) if prob >= t]
            audit.append(session, self.keys.audit_key, event_type="prediction.created",
                         actor="cxrd:worker", host=self.audit_host, study_uid=p.study_uid,
                         object_uid=p.sop_uid, details={"model": version, "positive": positives})
        if rows:
            conn.execute(insert(Prediction.__table__), rows)
        input_profile.record(conn, [(p.instance_id, p.profile, p.view) for p in good], version, now)
        conn.execute(update(Instance.__table__).where(Instance.id.in_(ids), Instance.state == RECEIVED)
                     .values(state=PREDICTED, updated_at=now))
        conn.execute(update(Job.__table__).where(Job.id.in_([p.job_id for p in good]))
                     .values(state="done", last_error=""))

    def _record_failures(self, session: Session, bad: list[Prepared], now: datetime) -> None:
        """Each failed job back to the queue with a growing delay, or, once it cannot succeed
        (tampered object, `MAX_ATTEMPTS` reached), its instance parked and audited."""
        for p in bad:
            final = is_final(p)
            session.execute(update(Job).where(Job.id == p.job_id).values(
                state="failed" if final else "queued", claimed_by="", claimed_at=None,
                last_error=p.error[:500], not_before=now + timedelta(seconds=retry_delay_s(p))))
            if final:
                session.execute(update(Instance).where(Instance.id == p.instance_id)
                                .values(state=QUARANTINED if p.quarantine else FAILED, error=p.error[:500],
                                        updated_at=now))
                audit.append(session, self.keys.audit_key,
                             event_type="security.tamper" if p.quarantine else "instance.failed",
                             outcome=12 if p.quarantine else 8, actor="cxrd:worker", host=self.audit_host,
                             study_uid=p.study_uid, object_uid=p.sop_uid,
                             details={"error": p.error[:200], "class": p.error_class,
                                      "attempts": p.attempts, "model": p.version})
