"""Prometheus metrics: counters the pipeline stages bump, and gauges read from the database on scrape.

Counters and histograms live in this process; queue depth, states, model age, retrain runs, the
audit chain head, report intake and ground truth, and what the shadow candidate has scored are read
from the shared database (and the registry's pointers) when /metrics is scraped (cached a few
seconds), so every daemon of a scale-out setup reports the same truth.
"""
from __future__ import annotations

import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cxrmodel.shadow_pointer import read_shadow
from storage import monitoring as monitor_state
from storage.ground_truth import counts_by_source
from storage.models import AuditEvent, Instance, Job, Result, RetrainRun
from storage.reports import counts_by_state
from storage.shadow import versions as shadow_versions

# Monitoring gauges written by the scheduled monitoring job (daemon.stages.monitoring) and read here,
# so every daemon reports the same values: metric -> (help, label names).
MONITOR_GAUGES = {
    "cxrd_drift_psi": ("PSI of a finding's live scores against the model's reference (>0.25 drift)",
                       ["label", "model"]),
    "cxrd_input_drift": ("PSI of an input characteristic against the model's reference (>0.25 drift)",
                         ["characteristic", "model"]),
    "cxrd_drift_alarm": ("1 while a finding's scores or an input characteristic have drifted from the "
                         "model's reference", ["model"]),
    "cxrd_live_auroc": ("Live AUROC of a finding on studies with ground truth (absent with too few cases)",
                        ["label", "model"]),
    "cxrd_performance_alarm": ("1 while a finding's live AUROC 95% CI lies below the promotion floor", ["model"]),
}



def gauge_by(name: str, doc: str, label: str, by: dict[str, int]) -> GaugeMetricFamily:
    """One gauge family of counts per value of `label` (rows grouped in SQL)."""
    g = GaugeMetricFamily(name, doc, labels=[label])
    for value, n in by.items():
        g.add_metric([value], n)
    return g

class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.associations = Counter("cxrd_associations_total", "DICOM associations by outcome",
                                    ["outcome"], registry=self.registry)
        self.instances = Counter("cxrd_instances_total", "C-STORE requests by outcome", ["outcome"],
                                 registry=self.registry)
        self.bytes = Counter("cxrd_received_bytes_total", "Bytes of instances stored (de-identified)",
                             registry=self.registry)
        self.receive_seconds = Histogram("cxrd_receive_seconds", "C-STORE handling time until the status is sent",
                                         buckets=(.002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5),
                                         registry=self.registry)
        self.inference_latency = Histogram("cxrd_inference_latency_seconds",
                                           "Acknowledgement to prediction committed",
                                           buckets=(.05, .1, .25, .5, 1, 2, 5, 10, 30, 60, 300),
                                           registry=self.registry)
        self.hl7_messages = Counter("cxrd_hl7_messages_total", "HL7 report messages and connections by "
                                    "outcome (accepted, duplicate, refused, failed, connection_refused)",
                                    ["outcome"], registry=self.registry)

    def observe_hl7(self, outcome: str) -> None:
        self.hl7_messages.labels(outcome).inc()

    def observe_store(self, outcome: str, seconds: float, nbytes: int) -> None:
        self.instances.labels(outcome).inc()
        self.receive_seconds.observe(seconds)
        if nbytes:
            self.bytes.inc(nbytes)

    def observe_prediction(self, latency_s: float) -> None:
        self.inference_latency.observe(latency_s)

    def attach_state(self, collector: "StateCollector") -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector:
    """Gauges computed from the database, the disk and the model registry at scrape time."""

    def __init__(self, sessions: sessionmaker[Session], state_dir: Path, min_free_mb: int,
                 current_model: Callable[[], object | None], cache_s: float = 5.0,
                 behind_anchor: Callable[[], bool] = lambda: False):
        self.behind_anchor = behind_anchor
        self.models_dir = state_dir / "models"  # the registry's; its shadow pointer is read torch-free
        self.sessions = sessions
        self.state_dir = state_dir
        self.min_free_bytes = min_free_mb * 1024 * 1024
        self.current_model = current_model
        self.cache_s = cache_s
        self._cached: tuple[float, list] = (0.0, [])
        self._lock = threading.Lock()

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        with self._lock:
            at, families = self._cached
            if time.monotonic() - at > self.cache_s:
                families = self._read()
                self._cached = (time.monotonic(), families)
        return families

    def _read(self) -> list:
        out = []
        free = shutil.disk_usage(self.state_dir).free
        g = GaugeMetricFamily("cxrd_disk_free_bytes", "Free bytes on the state directory's filesystem")
        g.add_metric([], free)
        out.append(g)
        g = GaugeMetricFamily("cxrd_disk_below_floor", "1 while new images are refused for lack of disk")
        g.add_metric([], 1 if free < self.min_free_bytes else 0)
        out.append(g)
        try:
            with self.sessions() as s:
                states = dict(s.execute(select(Instance.state, func.count()).group_by(Instance.state)).all())
                queue = s.scalar(select(func.count()).select_from(Job).where(Job.state.in_(("queued", "running"))))
                results = dict(s.execute(select(Result.state, func.count()).group_by(Result.state)).all())
                runs = dict(s.execute(select(RetrainRun.outcome, func.count()).group_by(RetrainRun.outcome)).all())
                head = s.scalar(select(func.max(AuditEvent.seq)))
                monitored = monitor_state.gauges(s)
                reports, by_source, scored = counts_by_state(s), counts_by_source(s), shadow_versions(s)
            up = 1
        except Exception:  # database down: say so, keep serving the other metrics
            states, queue, results, runs, head, up, monitored = {}, 0, {}, {}, 0, 0, []
            reports, by_source, scored = {}, {}, {}
        g = GaugeMetricFamily("cxrd_database_up", "1 if the database answered this scrape")
        g.add_metric([], up)
        out.append(g)
        g = GaugeMetricFamily("cxrd_queue_depth", "Jobs waiting for or in inference")
        g.add_metric([], queue or 0)
        out.append(g)
        out += [gauge_by("cxrd_instances", "Instances by state", "state", states),
                gauge_by("cxrd_results", "Result objects by state", "state", results),
                gauge_by("cxrd_retrain_runs", "Retraining runs by outcome", "outcome", runs)]
        g = GaugeMetricFamily("cxrd_audit_chain_head", "Sequence number of the newest audit row")
        g.add_metric([], head or 0)
        out.append(g)
        g = GaugeMetricFamily("cxrd_audit_chain_behind_anchor",
                              "1 while the audit chain's head is behind (or differs from) the last anchored head: "
                              "rows were removed or replaced")
        g.add_metric([], 1 if self.behind_anchor() else 0)
        out.append(g)
        families = {name: GaugeMetricFamily(name, doc, labels=names) for name, (doc, names) in MONITOR_GAUGES.items()}
        for metric, labels, value, _alarm in monitored:
            family = families.get(metric)
            if family is not None and value is not None:
                family.add_metric([str(labels.get(n, "")) for n in MONITOR_GAUGES[metric][1]], value)
        out += list(families.values())
        info = self.current_model()
        g = GaugeMetricFamily("cxrd_model_info", "The current model (1) by version", labels=["version"])
        a = GaugeMetricFamily("cxrd_model_age_seconds", "Seconds since the current model was created")
        if info is not None:
            g.add_metric([info.version], 1)
            try:
                created = datetime.fromisoformat(info.created)
                a.add_metric([], (datetime.now(timezone.utc) - created).total_seconds())
            except (TypeError, ValueError):
                pass
        out += [g, a]
        out += self._shadow(scored)
        out += [gauge_by("cxrd_reports", "Radiology reports from the RIS by state", "state", reports),
                gauge_by("cxrd_labels", "Ground-truth labels by source (manual, report)", "source", by_source)]
        return out

    def _shadow(self, scored: dict[str, int]) -> list:
        """The shadow candidate by version (1 while one runs) and the live images each candidate
        version has scored (stored shadow predictions: a count that only grows while rows are kept)."""
        try:
            version = read_shadow(self.models_dir)["version"]
        except Exception:  # an unreadable pointer: the worker runs no shadow either
            version = None
        g = GaugeMetricFamily("cxrd_shadow_model_info", "The shadow candidate (1) by version; absent when none runs",
                              labels=["version"])
        if version:
            g.add_metric([version], 1)
        c = CounterMetricFamily("cxrd_shadow_predictions", "Live images a shadow candidate scored, by its version "
                                "(stored apart; nothing a shadow says is sent)", labels=["model"])
        for model, n in sorted(scored.items()):
            c.add_metric([model], n)
        if version and version not in scored:
            c.add_metric([version], 0)
        return [g, c]
