"""`cxrd serve`: start the pipeline's stages in one process and stop them in the right order.

The stages meet only through committed database state (mercure's lesson), so the service is just
their lifecycle: migrate, load keys, probe the state directory, bind the DICOM port, start the
worker, results sender, scheduler and HTTP endpoint, tell systemd we are ready, then on SIGTERM stop
accepting first and drain in-flight work before exiting 0.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from typing import Callable, Protocol

from daemon.dicom import patches, scp
from daemon.errors import DaemonError
from daemon.hl7.intake import ReportIntake
from daemon.hl7.listener import Hl7Listener
from daemon.ops import systemd
from daemon.ops.chain_anchoring import ChainAnchoring
from daemon.ops.http import HttpEndpoint
from daemon.ops.logs import event
from daemon.ops.process_guard import forbid_core_dumps
from daemon.ops.refusal_audit import RefusalAudit
from daemon.ops.prometheus import Metrics, StateCollector
from daemon.runtime import Runtime
from daemon.stages import monitoring, results, retraining
from daemon.stages.chest_rule import chest_rule_from
from daemon.stages.ingest import Ingest, sweep_orphans
from daemon.stages.report_matching import ReportMatching, label_text
from daemon.stages.scheduling import RetrainScheduler
from daemon.stages.worker import EngineSettings, Worker
from storage import db
from storage.deid import DeidOptions
from storage.errors import DatabaseUnavailable
from storage.vault import Vault

log = logging.getLogger("cxrd.service")

DRAIN_S = 20.0


class Stage(Protocol):
    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def healthy(self) -> bool: ...


def probe_state_dir(rt: Runtime) -> None:
    """Write, fsync and remove a file: catches read-only mounts and full disks before READY=1."""
    probe = rt.ensure_state_dir() / ".write-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"cxrd")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise DaemonError(f"state directory {rt.state_dir} is not writable: {exc.strerror}") from None


def check_host_gate(allowed_hosts: list[str], allow_any_host: bool, section: str = "dicom") -> None:
    """The DICOM port fails closed: with no source allow-list, anyone who can reach the port could have
    images stored and, with results on, a cxrd report written into a real patient's study. An empty
    list is served only when the configuration says so explicitly, and then warned about at every start."""
    if allowed_hosts:
        return
    dicom = section == "dicom"
    if not allow_any_host:
        raise DaemonError(f"{section}.allowed_hosts is empty: list the {'PACS' if dicom else 'RIS'}'s addresses "
                          f"(e.g. [\"10.1.2.3\"]), or set {section}.allow_any_host = true to accept "
                          f"{'associations' if dicom else 'connections'} from any host")
    event(log, "dicom.any_host_allowed" if dicom else "hl7.any_host_allowed", logging.WARNING,
          hint=f"{section}.allow_any_host is true: any host that reaches the "
               + ("DICOM port may store images" if dicom else "HL7 port may send reports"))


class Service:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.stop_requested = threading.Event()
        self.stages: list[Stage] = []
        self.scp: scp.ScpHandle | None = None
        self.worker: Worker | None = None  # woken by each stored image
        self.matching: ReportMatching | None = None  # woken by each stored image and recorded report
        self.hl7: Hl7Listener | None = None
        # Refusals are counted here and audited by its own thread, never on the accept path.
        self.refusals = RefusalAudit(rt.audit)
        self.metrics = Metrics()

    def start(self) -> None:
        rt, s = self.rt, self.rt.settings
        if s.dicom.enabled:
            check_host_gate(s.dicom.allowed_hosts, s.dicom.allow_any_host)
        if s.hl7.listen.enabled:
            check_host_gate(s.hl7.listen.allowed_hosts, s.hl7.listen.allow_any_host, "hl7.listen")
        probe_state_dir(rt)
        revision = db.migrate(rt.engine)
        self.stages = self._build_stages()
        started: list[Stage] = []
        try:
            for stage in self.stages:
                stage.start()
                started.append(stage)
        except OSError as exc:
            self.stages = started
            self._stop_stages()
            raise DaemonError(str(exc.strerror or exc)) from None
        if s.dicom.enabled:
            patches.install(s.dicom.receive_adjustments)
            try:
                self.scp = scp.start(s.dicom, on_store=self._on_store(), on_reject=self._on_reject,
                                     on_accept=self._on_accept)
            except OSError as exc:
                self._stop_stages()
                raise DaemonError(f"cannot listen for DICOM on {s.dicom.bind}:{s.dicom.port}: "
                                   f"{exc.strerror or exc}") from None
        if s.hl7.listen.enabled:
            try:
                self.hl7 = self._hl7_listener()
                self.hl7.start()
            except (OSError, ValueError) as exc:
                self.hl7 = None
                if self.scp is not None:
                    self.scp.stop(drain_s=DRAIN_S)
                self._stop_stages()
                raise DaemonError(f"cannot listen for HL7 on {s.hl7.listen.bind}:{s.hl7.listen.port}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
        where = f"{s.dicom.ae_title}@{s.dicom.bind}:{self.scp.port}" if self.scp else "off (worker-only)"
        event(log, "service.started", state_dir=str(rt.state_dir),
              database=rt.engine.url.render_as_string(hide_password=True), schema=revision, dicom=where,
              stages=",".join(st.name for st in self.stages), pid=os.getpid())
        self._audit_service("config.loaded", config_file=self.rt.config_file or "(embedded defaults)",
                            settings_sha256=settings_digest(self.rt.settings))
        self._audit_service("app.start", dicom=where, schema=revision, pid=os.getpid())
        hl7 = f"; HL7 {s.hl7.listen.bind}:{self.hl7.port}" if self.hl7 else ""
        print(f"cxrd: DICOM {where}{hl7}; state in {rt.state_dir}", flush=True)
        systemd.notify("READY=1", f"STATUS=DICOM {where}")

    def _build_stages(self) -> list[Stage]:
        rt, s = self.rt, self.rt.settings
        vault = Vault(rt.vault_dir, rt.keys.keyring)
        leftovers = vault.recover()
        orphans = sweep_orphans(rt.sessions, vault)
        if leftovers or orphans:
            event(log, "vault.recovered", temp_files=leftovers, orphans=orphans)
        self.ingest = Ingest(
            engine=rt.engine, read_sessions=rt.read_sessions, vault=vault, keys=rt.keys,
            observe=self._observe_store,
            deid=DeidOptions(**dataclasses.asdict(s.deid)),
            chest=chest_rule_from(s.dicom.chest_body_parts, s.dicom.min_image_size),
            unknown_view=s.dicom.unknown_view, non_chest=s.dicom.non_chest, min_free_mb=s.storage.min_free_mb, hostname=rt.hostname,
            max_pixels=s.dicom.max_pixels,
            max_writers=s.dicom.max_associations)
        # Stopped last (reverse order), so they record up to the end.
        self.anchoring = ChainAnchoring(rt.sessions, rt.keys.audit_key, rt.state_dir,
                                        s.storage.audit_anchor_interval_s)
        stages: list[Stage] = [self.anchoring] + ([self.refusals] if s.dicom.enabled else [])
        if s.hl7.listen.enabled:
            # refused connections and messages of the HL7 port, aggregated like the DICOM gate's
            hl7_log = logging.getLogger("cxrd.hl7")
            self.hl7_refusals = RefusalAudit(rt.audit, event_type="hl7.connection_refused", logger=hl7_log,
                                             log_event="hl7.connection_refused", name="hl7-connection-refusals")
            self.hl7_message_refusals = RefusalAudit(
                rt.audit, event_type="report.refused", log_event="hl7.message_refused", actor_prefix="hl7:",
                titles=("sending_applications", "sending_facilities"), log_fields=("sender", "sending_facility"),
                logger=hl7_log, name="hl7-message-refusals")
            self.matching = ReportMatching(rt.sessions, vault, rt.keys.audit_key, s.hl7.match_wait_s,
                                           host=rt.hostname)
            stages += [self.hl7_refusals, self.hl7_message_refusals, self.matching]
            self._vault = vault
        if s.model.workers > 0:
            self.worker = Worker(
                sessions=rt.sessions, vault=vault, keys=rt.keys, registry=rt.registry,
                engine_settings=EngineSettings(backend=s.model.backend,
                                               threads=s.model.threads or max(1, (os.cpu_count() or 2) - 1),
                                               batch_size=s.model.batch_size,
                                               max_batch_wait_ms=s.model.max_batch_wait_ms),
                results_enabled=s.results.enabled, audit_host=rt.hostname,
                observe=self.metrics.observe_prediction)
            stages.append(self.worker)
        if s.results.enabled:
            stages.append(results.from_settings(rt, vault))
        if s.retrain.enabled or s.storage.retention_days > 0 or s.monitor.enabled:
            retraining.install(rt)
            monitoring.install(rt)
            stages.append(RetrainScheduler(engine=rt.engine, state_dir=rt.state_dir,
                                           cron=s.retrain.schedule if s.retrain.enabled else None,
                                           purge_daily=s.storage.retention_days > 0,
                                           monitor_minutes=s.monitor.interval_minutes if s.monitor.enabled else 0))
        if s.http.enabled:
            self.metrics.attach_state(StateCollector(rt.read_sessions, rt.state_dir, s.storage.min_free_mb,
                                                     rt.registry.current,
                                                     behind_anchor=lambda: self.anchoring.behind_anchor))
            stages.append(HttpEndpoint(s.http.bind, s.http.port, health=self.health_check,
                                       ready=self.ready_check, metrics=self.metrics.render))
        return stages

    def health_check(self) -> tuple[bool, str]:
        bad = [st.name for st in self.stages if not st.healthy()]
        if self.scp is not None and self.scp.server.socket.fileno() == -1:
            bad.append("dicom")
        if self.hl7 is not None and not self.hl7.healthy():
            bad.append("hl7")
        return (not bad, "ok" if not bad else "unhealthy: " + ", ".join(bad))

    def ready_check(self) -> tuple[bool, str]:
        ok, reason = self.health_check()
        if not ok:
            return ok, reason
        if self.rt.settings.dicom.enabled and self.scp is None:
            return False, "starting: DICOM port not bound yet"
        try:
            db.ping(self.rt.engine)
        except DatabaseUnavailable:
            return False, "database unavailable"
        if self.ingest.disk_is_low():
            return False, "disk below the free-space floor: new images are refused"
        return True, "ready"

    def _observe_store(self, outcome: str, seconds: float, nbytes: int) -> None:
        self.metrics.observe_store(outcome, seconds, nbytes)
        if outcome == "stored" and self.worker is not None:
            self.worker.wake()
        if outcome == "stored" and self.matching is not None:
            self.matching.wake()

    def _hl7_listener(self) -> Hl7Listener:
        rt, s = self.rt, self.rt.settings
        intake = ReportIntake(
            sessions=rt.sessions, vault=self._vault, keys=rt.keys, label=label_text,
            on_refused=self.hl7_message_refusals.record,
            keep_text=s.hl7.report_text == "encrypted", match_wait_s=s.hl7.match_wait_s,
            application=s.hl7.listen.receiving_application, facility=s.hl7.listen.receiving_facility,
            observe=self.metrics.observe_hl7, on_recorded=self.matching.wake,
            on_connection_refused=lambda host, reason: self.hl7_refusals.record("", host, reason),
            disk_is_low=self.ingest.disk_is_low)
        return Hl7Listener(s.hl7.listen, intake)

    def _on_store(self):  # noqa: ANN202
        return self.ingest.store

    def _on_accept(self, calling_aet: str, host: str) -> None:
        self.metrics.associations.labels("accepted").inc()
        self._audit_quietly(lambda: self.ingest.audit_association(calling_aet, host))

    def _on_reject(self, calling_aet: str, host: str, reason: str, called_aet: str = "") -> None:
        self.metrics.associations.labels("rejected").inc()
        self.refusals.record(calling_aet, host, reason, called_aet)

    def _audit_service(self, event_type: str, **fields) -> None:  # noqa: ANN003
        self._audit_quietly(lambda: self.rt.audit(event_type, **fields))

    @staticmethod
    def _audit_quietly(write: Callable[[], None]) -> None:
        """Audit from a network or lifecycle callback: a failed audit write is logged, never raised
        (an association, a refusal or a stop must not fail because the audit row could not be written)."""
        try:
            write()
        except Exception as exc:
            log.error("audit.write_failed", exc_info=exc)

    def healthy(self) -> bool:
        return self.health_check()[0]

    def run_until_stopped(self) -> None:
        interval = systemd.watchdog_interval_s() or 1.0
        while not self.stop_requested.wait(min(interval, 1.0)):
            if self.healthy():
                systemd.notify("WATCHDOG=1")
            else:
                event(log, "service.unhealthy", logging.ERROR)

    def stop(self) -> None:
        systemd.notify("STOPPING=1")
        t0 = time.monotonic()
        if self.scp is not None:
            self.scp.stop(drain_s=DRAIN_S)
        if self.hl7 is not None:
            self.hl7.stop(drain_s=DRAIN_S)
        self._stop_stages()
        self._audit_service("app.stop", seconds=round(time.monotonic() - t0, 2))
        event(log, "service.stopped", seconds=round(time.monotonic() - t0, 2))

    def _stop_stages(self) -> None:
        for stage in reversed(self.stages):
            try:
                stage.stop()
            except Exception as exc:  # keep stopping the others
                log.error("stage.stop_failed", exc_info=exc, extra={"cxrd_fields": {"stage": stage.name}})


def settings_digest(settings) -> str:  # noqa: ANN001
    """sha256 of the effective settings (secrets redacted): which configuration was running, in the audit."""
    import hashlib
    import json
    from config import redacted
    return hashlib.sha256(json.dumps(redacted(settings), sort_keys=True).encode()).hexdigest()


def serve(rt: Runtime) -> int:
    forbid_core_dumps()  # before any key is loaded
    service = Service(rt)

    def on_signal(signum: int, _frame) -> None:  # noqa: ANN001
        event(log, "service.stopping", signal=signal.Signals(signum).name)
        service.stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    try:
        service.run_until_stopped()
    finally:
        service.stop()
    return 0
