"""Shadow candidates: a second model scored on live traffic beside the current one, never sent.

`cxrd model shadow VERSION` (or scheduled retraining, with `model.shadow.after_retrain`) names one
version in the registry's shadow pointer (`cxrmodel.shadow_pointer`). The worker then runs it on
every batch the current model has just run on, on the very same preprocessed tensors, and hands the
probabilities to its record thread, which stores them in `shadow_predictions` (`storage.shadow`) in
a transaction of their own, after the current model's predictions are committed. What must stay
true:

* nothing the shadow says reaches a destination: its rows are never `predictions`, and nothing here
  calls the results stage; only the current model's report leaves;
* the current model's path never depends on the shadow: the shadow is loaded in a thread of its own
  (a batch that comes meanwhile simply has no shadow row), any failure to load it, to run it or to
  get probabilities out of it turns the shadow off (one log line, one audit event, the pointer
  cleared so a restart does not try again), and a failure to store its rows is logged and dropped;
* with no shadow chosen the cost is one `stat` of the pointer per prepared claim and one attribute
  read per forward;
* a shadow whose preprocessing differs from the current model's cannot share its tensors: it is
  refused when chosen, and skipped (logged once) if the current model changed under it.

The comparison (`live_comparison`) pairs, per image, the shadow's probabilities with the current
model's authentic prediction rows and the ground truth, and hands them to `cxrmodel.shadow_compare`.
The automatic promotion of a shadow that retraining put there is `model_changes.settle_retrained_shadow`.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from cxrmodel import shadow_compare
from cxrmodel.errors import ModelError
from cxrmodel.labels import LABELS
from cxrmodel.shadow_pointer import read_shadow, stamp
from daemon.ops.logs import event
from storage import audit
from storage import shadow as shadow_rows
from storage.keys import Keys
from storage.ground_truth import ground_truth
from storage.models import utcnow

if TYPE_CHECKING:  # torch only where a shadow is really run
    import torch

    from cxrmodel.engine import Engine
    from cxrmodel.registry import LoadedModel, Registry
    from daemon.runtime import Runtime

log = logging.getLogger("cxrd.shadow")
ACTOR = "cxrd:worker"


@dataclass
class ShadowBatch:
    """One forward of the shadow, handed from the inference thread to the record thread."""
    model_version: str
    current_version: str
    images: list[tuple[int, str, dict[str, float]]]  # (instance id, pseudonymous SOP UID, probabilities)


class ShadowRunner:
    """The shadow model of one worker: `refresh` (prepare thread), `forward` (inference thread),
    `record` (record thread)."""

    def __init__(self, *, registry: Registry, sessions: sessionmaker[Session], keys: Keys, audit_host: str,
                 backend: Callable[[], str], threads: int, batch_size: int):
        self.registry = registry
        self.sessions = sessions
        self.keys = keys
        self.audit_host = audit_host
        self.backend = backend  # the current engine's resolved backend: no second measurement
        self.threads = threads
        self.batch_size = batch_size
        self._stamp: tuple[int, int, int] | None = None
        self._active: tuple[LoadedModel, Engine] | None = None
        self._loading: threading.Thread | None = None
        self._lock = threading.Lock()
        self._skipped: set[tuple[str, str]] = set()

    @property
    def version(self) -> str | None:
        active = self._active
        return active[0].version if active else None

    # -- prepare thread: notice a new choice -----------------------------------------------------
    def refresh(self) -> None:
        """Follow the shadow pointer: one stat when nothing changed; (un)load when it did."""
        try:
            now = stamp(self.registry.root)
        except OSError as exc:  # an unreadable models directory: the current model's load will say so
            if self._stamp != (-1, -1, -1):
                event(log, "shadow.pointer_unreadable", logging.ERROR, reason=type(exc).__name__)
            self._stamp = (-1, -1, -1)
            return
        if now == self._stamp or (self._loading is not None and self._loading.is_alive()):
            return
        self._stamp = now
        try:
            version = read_shadow(self.registry.root)["version"] if now is not None else None
        except ModelError as exc:
            event(log, "shadow.pointer_unreadable", logging.ERROR, reason=str(exc))
            version = None
        if version == self.version:
            return
        self._unload()
        if version is not None:
            self._loading = threading.Thread(target=self._load, args=(version,), name="cxrd-shadow-load",
                                             daemon=True)
            self._loading.start()

    def _load(self, version: str) -> None:
        try:
            from cxrmodel.engine import Engine
            event(log, "shadow.loading", version=version)
            loaded = self.registry.load(version)
            engine = Engine.for_model(loaded, backend=self.backend(), threads=self.threads,
                                      batch_size=self.batch_size)
        except Exception as exc:  # bad weights, a missing file: the shadow goes, the current model stays
            self.disable(version, f"cannot load ({exc if isinstance(exc, ModelError) else type(exc).__name__})")
            return
        with self._lock:
            self._active = (loaded, engine)
        event(log, "shadow.loaded", version=version, backend=engine.backend)

    def _unload(self) -> None:
        with self._lock:
            active, self._active = self._active, None
        if active is not None:
            active[1].close()
            event(log, "shadow.unloaded", version=active[0].version)

    def disable(self, version: str, reason: str) -> None:
        """Turn a failing shadow off: logged once, audited, pointer cleared (if it still names it)."""
        with self._lock:
            if self._active is not None and self._active[0].version == version:
                self._active = None
        event(log, "shadow.disabled", logging.ERROR, version=version, reason=reason[:300],
              hint="the current model is unaffected; choose a shadow again with `cxrd model shadow VERSION`")
        try:
            self.registry.set_shadow(None, f"disabled: {reason[:200]}", only_if=version)
        except Exception as exc:  # a read-only registry: it stays off in this process (stamp below)
            log.error("shadow.pointer_not_cleared", exc_info=exc)
        self._stamp = stamp(self.registry.root)
        try:
            with self.sessions() as session, session.begin():
                audit.append(session, self.keys.audit_key, event_type="model.shadow.disabled", outcome=8,
                             actor=ACTOR, host=self.audit_host, details={"version": version, "reason": reason[:300]})
        except Exception as exc:
            log.error("shadow.audit_failed", exc_info=exc)

    # -- inference thread: the second forward ------------------------------------------------------
    def forward(self, model: LoadedModel, batch: torch.Tensor, images: Sequence[Any]) -> ShadowBatch | None:
        """The shadow's probabilities for `batch` (what `model`, the current one, just ran on), or None."""
        active = self._active
        if active is None:
            return None
        loaded, engine = active
        if loaded.version == model.version:
            return None  # it has just become current; the pointer is being cleared
        if loaded.manifest.preprocessing != model.manifest.preprocessing:
            if (loaded.version, model.version) not in self._skipped:
                self._skipped.add((loaded.version, model.version))
                event(log, "shadow.skipped", logging.WARNING, version=loaded.version, current=model.version,
                      reason="its preprocessing differs from the current model's: it cannot share its tensors")
            return None
        try:
            probs = np.asarray(engine.predict(batch), dtype=np.float64)
            if probs.shape != (len(images), len(LABELS)) or not np.isfinite(probs).all() \
                    or probs.min() < 0 or probs.max() > 1:
                raise ModelError(f"output is not {len(images)} rows of {len(LABELS)} probabilities")
        except Exception as exc:
            why = exc if isinstance(exc, ModelError) else type(exc).__name__
            self.disable(loaded.version, f"inference failed ({why})")
            return None
        return ShadowBatch(loaded.version, model.version,
                           [(p.instance_id, p.sop_uid, dict(zip(LABELS, map(float, row))))
                            for p, row in zip(images, probs)])

    # -- record thread: rows apart from predictions -----------------------------------------------------
    def record(self, batch: ShadowBatch) -> None:
        try:
            with self.sessions() as session, session.begin():
                n = shadow_rows.record(session, self.keys.record_key, batch.model_version, batch.current_version,
                                       batch.images, utcnow())
            event(log, "shadow.predicted", logging.DEBUG, images=n, model=batch.model_version,
                  current=batch.current_version)
        except Exception as exc:  # the current model's rows are already committed; these are only lost
            log.error("shadow.record_failed", exc_info=exc)

    def close(self) -> None:
        if self._loading is not None:
            self._loading.join(timeout=60)
        self._unload()


# -- comparison ------------------------------------------------------------------------------------------
def live_comparison(sessions: sessionmaker[Session], keys: Keys, candidate: str, current: str | None, *,
                    min_positives: int, n_boot: int = 1000) -> shadow_compare.Comparison | None:
    """The candidate against `current` on every live image both scored and that has ground truth;
    None when the candidate never ran in shadow."""
    with sessions() as session:
        truth = ground_truth(session)
        if current is None:
            got = shadow_rows.Paired()
        else:
            got = shadow_rows.paired(session, keys.record_key, candidate, current, truth.keys(), LABELS)
        total = shadow_rows.versions(session).get(candidate, 0)
    if not total:
        return None
    if current is None or not got.instance_ids:
        beside = f"beside {current}" if current else "with no current model"
        why = (f"{total} live images scored in shadow, none {beside} with ground truth yet"
               + (f"; {got.rejected} left out (row failed its HMAC)" if got.rejected else ""))
        return shadow_compare.empty(candidate, current or "", min_positives, why)
    comparison = shadow_compare.compare(
        shadow_compare.truth_matrix([truth[i] for i in got.instance_ids]),
        np.array([[p[lab] for lab in LABELS] for p in got.current]),
        np.array([[p[lab] for lab in LABELS] for p in got.candidate]),
        got.studies, min_positives=min_positives, n_boot=n_boot, current_version=current,
        candidate_version=candidate)
    if got.rejected:
        comparison = _with_note(comparison, f"{got.rejected} image(s) left out: a row failed its HMAC")
    return comparison


def _with_note(c: shadow_compare.Comparison, note: str) -> shadow_compare.Comparison:
    from dataclasses import replace
    return replace(c, summary=f"{c.summary}; {note}")


def comparison_with_current(rt: Runtime, version: str, n_boot: int = 1000) -> shadow_compare.Comparison | None:
    """`version`'s live shadow comparison with the current model; None if it never ran in shadow or
    is the current model itself."""
    from cxrmodel.pointer import read_pointer
    current = read_pointer(rt.models_dir)["version"]
    if current == version:
        return None
    return live_comparison(rt.read_sessions, rt.keys, version, current,
                           min_positives=int(rt.settings.model.promotion.min_positives), n_boot=n_boot)


def shadow_refusal(comparison: shadow_compare.Comparison | None) -> str | None:
    """The one line that blocks a promotion on live data, or None: only a candidate significantly
    worse than the current model (the whole CI of the mean AUROC difference below 0) is refused."""
    if comparison is None or not comparison.clearly_worse:
        return None
    return f"live shadow comparison with {comparison.current}: {comparison.summary}"
