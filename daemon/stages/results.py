"""The results sender: claim pending `Result` rows, build the SR (and heatmap), C-STORE them to the PACS.

It meets the worker only through the `results` table: in the transaction that records predictions
the worker calls `schedule_result` here, which upserts a pending row per study and model version;
a study with images the model never sees (a lateral view) is found by a sweep of such images that
no sent report has listed yet, and scheduled the same way.

One report per study: a claimed row is sent only once the study has settled, judged on its images
that no sent report lists yet (`Instance.reported_at` NULL): no new image for `settle_quiet_s`, and
none of them still queued for inference, or `settle_max_s` after the first of them arrived,
whichever comes first. Until then the row goes back to pending, due when the study could settle, and
the claim does not count as an attempt. The settings are read at start; queued rows keep no
deadline of their own, so a restart with new values applies them to the rows already waiting.
The report lists every analysed image of the study with its findings and every image that was not
analysed with the reason. When a study that was reported gets more images, the next report is a
replacement: a new SOP Instance UID, the earlier report in its Predecessor Documents Sequence and a
line saying it replaces it; `sent_reports` keeps which report superseded which (audited).
A heatmap's UIDs depend only on the image and finding it shows, so a replacement whose top finding
is on the same image re-sends the same instances (no second copy in the PACS); every report names
the heatmap objects that go with it, so one that shows another image says which are current.
A claim is a lease (`daemon.stages.leases`): the row becomes `sending`, held by us, with
`next_attempt_at` pushed `LEASE_S` ahead; a sender that dies simply lets the lease run out and
another (or the restarted one) takes the row again. On PostgreSQL the claim uses
`FOR UPDATE SKIP LOCKED`; on SQLite the writer's BEGIN IMMEDIATE serialises claimers.

Beside C-STORE, the destinations `[results.stow]` and `[results.hl7]` enable (`daemon.stages.destinations`)
get every report after it; the row is `sent` only when all acknowledged, and a retry resends to all
(each is idempotent by the report's SOP Instance UID). A destination's `RefusedError` parks the row at
once; its `SendError`, like C-STORE's, counts as an attempt.

Failures to reach the destination are retried after `retry_base_s`, doubling per attempt, until
`max_attempts` attempts; then the row is parked as `failed` (audited, visible in `cxrd status`)
and only `cxrd results retry` puts it back. Problems no retry can fix (no re-identification entry,
a tampered one) park the row at once. Logs and audit rows name pseudonyms only; the original
identifiers exist in memory just long enough to build the objects.
"""
from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable

from pydicom.dataset import Dataset
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from cxrmodel.errors import ModelError
from cxrmodel.labels import LABELS
from daemon.dicom import result_objects as report
from daemon.dicom import statuses
from daemon.dicom.object_checks import ObjectCheckError, check_object
from daemon.ops.logs import event
from daemon.stages.destinations.content import ReportContent
from daemon.stages.destinations.errors import RefusedError
from daemon.stages.destinations.errors import SendError as DestinationSendError
from daemon.stages.leases import LEASE_S, worker_id
from storage import audit, records, reid
from storage.dicomfile import checked_instance
from storage.errors import StorageError, TamperError
from storage.keys import Keys
from storage.models import (NOT_ANALYSED, PREDICTED, RECEIVED, REPORTED, Instance, Prediction, Result, SentReport,
                            utcnow)
from storage.vault import Vault

if TYPE_CHECKING:  # the model is loaded only when a heatmap is drawn; `cxrd results` never loads torch
    from cxrmodel.registry import LoadedModel, Registry

log = logging.getLogger("cxrd.results")

ACTOR = "cxrd:results"
IDLE_POLL_S = 0.2
SWEEP_S = 2.0  # how often studies of not-analysed images only are looked for
INFERENCE_POLL_S = 5.0  # a settled study whose images await inference is looked at again this often
MAX_DELAY_S = 86400.0


class SendError(DestinationSendError):
    """The destination could not be reached or refused an object; worth retrying later."""


class _PredictionsTampered(TamperError):
    def __init__(self, sop: str):
        super().__init__(sop, "prediction rows failed authentication (edited, moved or not written by cxrd)")


class _AwaitingInference(Exception):
    """Nothing of the study is predicted yet but an image awaits inference: wait, even past the max."""


class _ReidUnusable(Exception):
    """A re-identification entry that exists but cannot be trusted (tampered, unreadable)."""


class PermanentError(Exception):
    """Nothing to send or the source data is unusable; a retry would fail the same way."""


@dataclass(frozen=True)
class Destination:
    calling_aet: str
    called_aet: str
    host: str
    port: int
    tls: ssl.SSLContext | None = None
    timeout_s: float = 30.0

    def describe(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}" + (" (TLS)" if self.tls else "")


def retry_delay_s(attempts: int, base_s: float) -> float:
    """Seconds to wait after the `attempts`-th failure: base, 2*base, 4*base, ... capped at a day."""
    return min(MAX_DELAY_S, base_s * (2 ** max(0, attempts - 1)))


def send(datasets: list[Dataset], dest: Destination) -> None:
    """C-STORE every object over one association; SendError with a one-line reason otherwise."""
    from pynetdicom import AE
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ae = AE(ae_title=dest.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout_s
    ae.connection_timeout = min(dest.timeout_s, 10.0)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    tls_args = (dest.tls, dest.host) if dest.tls is not None else None
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.called_aet, tls_args=tls_args)
    if not assoc.is_established:
        # pynetdicom reports a refused connection as an abort, so the two are not told apart here.
        why = "rejected the association" if assoc.is_rejected else "not reachable (refused, aborted or timed out)"
        raise SendError(f"{dest.describe()} {why}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError(f"no C-STORE response from {dest.describe()}")
            if code not in statuses.KEPT_BY_PEER:
                raise SendError(f"{dest.describe()} answered C-STORE with status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()


def schedule_result(session: Session, study_uid: str, model_version: str, kind: str = "sr") -> None:
    """Ask for a (new) report of this study, in the caller's transaction; due now, and the sender
    then holds it back until the study has settled (`settle_wait_s`).

    A row already `sending` is left alone: its sender notices the newer images when it finishes
    and puts the row back to pending itself.
    """
    due = utcnow()
    row = session.scalar(select(Result).where(Result.study_uid == study_uid, Result.model_version == model_version,
                                              Result.kind == kind))
    if row is None:
        session.add(Result(study_uid=study_uid, model_version=model_version, kind=kind, state="pending",
                           next_attempt_at=due))
    elif row.state in ("sent", "failed", "pending"):
        row.state, row.attempts, row.next_attempt_at, row.last_error = "pending", 0, due, ""


def settle_wait_s(first: datetime, last: datetime, awaiting_inference: bool, now: datetime, *,
                  quiet_s: float, max_s: float) -> float:
    """Seconds to hold a study's report back (0: send now), given when its first and last unreported
    images arrived and whether some of them still await inference.

    Settled means quiet for `quiet_s` with nothing awaiting inference; `max_s` after the first image
    the report is sent with what there is (a later prediction then brings a replacement).
    """
    cap = (first + timedelta(seconds=max_s) - now).total_seconds()
    if cap <= 0:
        return 0.0
    quiet = (last + timedelta(seconds=quiet_s) - now).total_seconds()
    if quiet > 0:
        return min(quiet, cap)
    return min(INFERENCE_POLL_S, cap) if awaiting_inference else 0.0


def studies_to_sweep(session: Session, limit: int = 100) -> list[tuple[str, str | None]]:
    """Studies with a not-analysed image no sent report lists and no report queued, sending or
    parked: (study pseudonym, model version of its latest report row or None)."""
    queued = (select(Result.id).where(Result.study_uid == Instance.study_uid, Result.kind == "sr",
                                      Result.state.in_(("pending", "sending", "failed"))).exists())
    studies = list(session.scalars(
        select(Instance.study_uid).where(Instance.state == NOT_ANALYSED, Instance.reported_at.is_(None), ~queued)
        .group_by(Instance.study_uid).limit(limit)))
    out = []
    for study in studies:
        version = session.scalar(select(Result.model_version).where(Result.study_uid == study, Result.kind == "sr")
                                 .order_by(Result.id.desc()).limit(1))
        out.append((study, version))
    return out


def claim_results(session: Session, me: str, limit: int = 1, lease_s: float = LEASE_S) -> list[int]:
    """Claim due rows (pending, or `sending` whose lease ran out) in the caller's transaction."""
    now = utcnow()
    stmt = (select(Result.id).where(or_(Result.state == "pending", Result.state == "sending"),
                                    Result.next_attempt_at <= now)
            .order_by(Result.next_attempt_at, Result.id).limit(limit))
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    ids = list(session.scalars(stmt))
    if ids:
        session.execute(update(Result).where(Result.id.in_(ids)).values(
            state="sending", claimed_by=me, attempts=Result.attempts + 1,
            next_attempt_at=now + timedelta(seconds=lease_s)))
    return ids


def retry_failed(session: Session, *, study_uid: str | None = None, include_pending: bool = False) -> int:
    """Put parked (`failed`) rows back to `pending`, due now, with a fresh attempt count."""
    states = ["failed", "pending"] if include_pending else ["failed"]
    stmt = update(Result).where(Result.state.in_(states))
    if study_uid:
        stmt = stmt.where(Result.study_uid == study_uid)
    return session.execute(stmt.values(state="pending", attempts=0, next_attempt_at=utcnow(), last_error="",
                                       claimed_by="")).rowcount or 0


@dataclass
class _Collected:
    sources: list[_Source]
    not_analysed: list[tuple[int, str, report.NotAnalysedImage]]  # instance id, pseudonym, what the report says
    identity: report.StudyIdentity
    prior: tuple[int, report.PriorReport] | None  # the sent_reports row this report replaces
    # instances looked at but left out (no re-identification entry): counted as reported so that
    # they do not bring the same report back again and again
    unlisted: list[int]


@dataclass
class _Source:
    instance_id: int
    pseudo_sop: str
    vault_object: str | None
    image: report.SourceImage
    findings: list[report.Finding]


def heatmap_choice(findings: list[report.Finding], sources: list[_Source]) -> tuple[report.Finding, _Source]:
    """What the heatmap shows: the study's top finding, on the image where it is highest (the first
    such image in the report's order on a tie, so the same study always gives the same choice)."""
    top = max(findings, key=lambda f: f.probability)
    src = max(sources, key=lambda s: next((f.probability for f in s.findings if f.label == top.label), -1.0))
    return top, src


class ResultsSender:
    """One thread: claim -> re-identify (audited) -> build -> C-STORE -> record; `start`/`stop`/`healthy`."""

    name = "results"

    def __init__(self, *, sessions: sessionmaker[Session], vault: Vault, keys: Keys, registry: Registry,
                 destination: Destination, send_sr: bool = True, send_heatmap: bool = False,
                 heatmap_objects: tuple[str, ...] = ("secondary_capture",),
                 max_attempts: int = 8, retry_base_s: float = 5.0, audit_host: str = "",
                 settle_quiet_s: float = 0.0, settle_max_s: float = 0.0,
                 sender: Callable[[list[Dataset], Destination], None] = send, destinations: tuple = ()):
        self.sessions = sessions
        self.vault = vault
        self.keys = keys
        self.registry = registry
        self.destination = destination
        self.send_sr = send_sr
        self.send_heatmap = send_heatmap
        self.heatmap_objects = tuple(heatmap_objects)
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.audit_host = audit_host
        self.sender = sender
        # STOW-RS / HL7 (daemon.stages.destinations), after C-STORE; the row is sent once all acknowledged
        self.destinations = tuple(destinations)
        self.settle_quiet_s = settle_quiet_s
        self.settle_max_s = settle_max_s
        self._next_sweep = 0.0
        self.me = worker_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._models: dict[str, LoadedModel] = {}
        self._identities: dict[str, report.ModelIdentity] = {}
        self.last_beat = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cxrd-results", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and time.monotonic() - self.last_beat < 300

    def _run(self) -> None:
        while not self._stop.is_set():
            self.last_beat = time.monotonic()
            try:
                if not self.run_once():
                    self._stop.wait(IDLE_POLL_S)
            except Exception as exc:  # a database hiccup must not end the stage: log, back off, go on
                log.error("results.loop_failed", exc_info=exc)
                self._stop.wait(2.0)

    def run_once(self) -> bool:
        """Claim and handle one due row; False when nothing was due."""
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_S
            self.sweep()
        with self.sessions() as session, session.begin():
            ids = claim_results(session, self.me, 1)
        if not ids:
            return False
        self.handle(ids[0])
        return True

    def sweep(self) -> int:
        """Queue a report for each study whose not-analysed images no report lists yet (a study of
        lateral views only, or a lateral arriving after the report): under the model of the study's
        latest report, else the current model. Returns how many were queued."""
        if not self.send_sr:  # only the SR lists images that were not analysed
            return 0
        with self.sessions() as session, session.begin():
            found = studies_to_sweep(session)
            for study, version in found:
                if version is None:
                    try:
                        version = self.registry.current_version()
                    except ModelError:  # no model yet: the images wait, nothing is lost
                        return 0
                schedule_result(session, study, version)
        return len(found)

    # -- one result --------------------------------------------------------------------------------
    def _settle(self, study: str) -> float:
        """Seconds until this study's report may be sent (0: now); see `settle_wait_s`."""
        with self.sessions() as session:
            rows = session.execute(
                select(Instance.state, func.min(Instance.received_at), func.max(Instance.received_at))
                .where(Instance.study_uid == study, Instance.reported_at.is_(None),
                       Instance.state.in_((RECEIVED, PREDICTED, NOT_ANALYSED)))
                .group_by(Instance.state)).all()
        if not rows:
            return 0.0
        first, last = min(r[1] for r in rows), max(r[2] for r in rows)
        tz = utcnow().tzinfo
        first, last = (t if t.tzinfo else t.replace(tzinfo=tz) for t in (first, last))
        return settle_wait_s(first, last, any(r[0] == RECEIVED for r in rows), utcnow(),
                             quiet_s=self.settle_quiet_s, max_s=self.settle_max_s)

    def _defer(self, result_id: int, seconds: float) -> None:
        """Back to pending, due when the study may have settled; the claim was not an attempt."""
        with self.sessions() as session, session.begin():
            session.execute(update(Result).where(Result.id == result_id, Result.claimed_by == self.me).values(
                state="pending", claimed_by="", attempts=Result.attempts - 1,
                next_attempt_at=utcnow() + timedelta(seconds=seconds)))

    def handle(self, result_id: int) -> None:
        t0 = time.monotonic()
        with self.sessions() as session:
            row = session.get(Result, result_id)
            study, version, kind, attempts = row.study_uid, row.model_version, row.kind, row.attempts
        wait = self._settle(study)
        if wait > 0:
            self._defer(result_id, wait)
            return
        try:
            got = self._collect(result_id, study, version)
            objects = self._build(study, version, kind, got)
            self._check(objects)
        except _AwaitingInference:
            self._defer(result_id, INFERENCE_POLL_S)
            return
        except PermanentError as exc:
            self._finish_failed(result_id, study, version, attempts, str(exc), final=True)
            return
        try:
            self.sender(objects, self.destination)
            if self.destinations:
                content = self._content(version, got, objects)
                for dest in self.destinations:
                    dest.send(objects, content)
        except RefusedError as exc:  # the peer refused the content itself: a retry would be refused too
            self._finish_failed(result_id, study, version, attempts, str(exc), final=True)
            return
        except Exception as exc:  # any network/TLS/protocol problem is worth another try
            text = str(exc) if isinstance(exc, DestinationSendError) else f"send failed ({type(exc).__name__})"
            self._finish_failed(result_id, study, version, attempts, text, final=attempts >= self.max_attempts)
            return
        self._finish_sent(result_id, study, version, got, objects, time.monotonic() - t0)

    def _collect(self, result_id: int, study: str, version: str) -> _Collected:
        """The study's predicted instances with their findings and ORIGINAL UIDs, its not-analysed
        instances with their reason, and the report this one replaces; each lookup audited."""
        with self.sessions() as session, session.begin():
            rows = session.execute(
                select(Instance.id, Instance.sop_instance_uid, Instance.sop_class_uid, Instance.vault_object,
                       Prediction.label, Prediction.probability, Prediction.threshold, Prediction.positive,
                       Prediction.mac)
                .join(Prediction, Prediction.instance_id == Instance.id)
                .where(Instance.study_uid == study, Instance.state.in_((PREDICTED, REPORTED)),
                       Prediction.model_version == version)
                .order_by(Instance.id)).all()
            by_id: dict[int, _Source] = {}
            originals: dict[int, dict[str, str]] = {}
            unusable = ""
            looked_up: set[int] = set()
            unlisted: list[int] = []
            forged = [sop for _, sop, _, _, label, prob, thr, pos, tag in rows
                      if not records.verify(self.keys.record_key, tag, sop, version, label, prob, thr, pos)]
            if forged:  # an edited, moved or foreign prediction row: no report from this study's rows
                audit.record_tamper(session, self.keys.audit_key, _PredictionsTampered(forged[0]),
                                    what="predictions", actor=ACTOR, host=self.audit_host, study_uid=study)
                unusable = f"{len(forged)} prediction row(s) failed authentication"
                rows = []
            for iid, sop, sop_class, obj, label, prob, thr, pos, _ in rows:
                if iid not in looked_up:
                    looked_up.add(iid)
                    try:
                        orig = self._original(session, study, sop)
                    except _ReidUnusable as exc:
                        unusable = str(exc)
                        break  # leave the block normally so the security alert is committed
                    if orig is None:
                        unlisted.append(iid)
                        continue
                    originals[iid] = orig
                    by_id[iid] = _Source(iid, sop, obj, report.SourceImage(
                        sop_class_uid=sop_class, sop_instance_uid=orig["sop_instance_uid"],
                        series_uid=orig.get("series_uid", "")), [])
                if iid in by_id:
                    by_id[iid].findings.append(report.Finding(label, float(prob), float(thr), bool(pos)))
            skipped: list[tuple[int, str, report.NotAnalysedImage]] = []
            if not unusable:
                for iid, sop, sop_class, view, reason in session.execute(
                        select(Instance.id, Instance.sop_instance_uid, Instance.sop_class_uid, Instance.view,
                               Instance.analysis_reason)
                        .where(Instance.study_uid == study, Instance.state == NOT_ANALYSED).order_by(Instance.id)):
                    try:
                        orig = self._original(session, study, sop)
                    except _ReidUnusable as exc:
                        unusable = str(exc)
                        break
                    if orig is None:
                        unlisted.append(iid)
                        continue
                    originals[iid] = orig
                    skipped.append((iid, sop, report.NotAnalysedImage(report.SourceImage(
                        sop_class_uid=sop_class, sop_instance_uid=orig["sop_instance_uid"],
                        series_uid=orig.get("series_uid", "")), view, reason)))
            awaiting = session.scalar(select(Instance.id).where(Instance.study_uid == study,
                                                                Instance.state == RECEIVED).limit(1)) is not None
            prior_row = session.execute(
                select(SentReport.id, SentReport.sop_instance_uid).where(SentReport.result_id == result_id)
                .order_by(SentReport.id.desc()).limit(1)).first()
        if unusable:
            raise PermanentError(unusable)
        if rows and not by_id:  # findings exist but cannot be filed: never a "nothing analysed" report
            raise PermanentError("no predicted instance of this study has a re-identification entry")
        if not by_id and awaiting:  # a frontal image is still queued: never report "nothing analysed" early
            raise _AwaitingInference()
        if not by_id and not skipped:
            raise PermanentError("no instance of this study has a re-identification entry")
        first = originals[next(iter(by_id))] if by_id else originals[skipped[0][0]]
        identity = report.StudyIdentity(
            study_uid=first["study_uid"], patient_id=first.get("patient_id", ""),
            patient_name=first.get("patient_name", ""), issuer_of_patient_id=first.get("issuer_of_patient_id", ""),
            accession_number=first.get("accession_number", ""), study_date=first.get("study_date", ""))
        sources = list(by_id.values())
        for s in sources:
            s.findings.sort(key=lambda f: LABELS.index(f.label) if f.label in LABELS else len(LABELS))
        prior = None
        if prior_row is not None:
            series, _ = report.report_uids(study, version, "sr", [])
            prior = (prior_row[0], report.PriorReport(series_uid=series, sop_instance_uid=prior_row[1]))
        return _Collected(sources, skipped, identity, prior, unlisted)

    def _original(self, session: Session, study: str, sop: str) -> dict[str, str] | None:
        """The instance's original identifiers from its re-identification entry (the lookup audited),
        or None when it has no usable one. A tampered or unreadable entry is recorded as a security
        alert and raised as `_ReidUnusable`: nothing is ever sent under a wrong identity."""
        try:
            orig = reid.open_entry(session, self.keys.reid_key, sop)
        except StorageError as exc:  # TamperError included
            audit.record_tamper(session, self.keys.audit_key, exc, what="reid", actor=ACTOR,
                                host=self.audit_host, study_uid=study)
            raise _ReidUnusable(f"re-identification entry unusable: {exc}") from exc
        audit.append(session, self.keys.audit_key, event_type="reid.lookup", actor=ACTOR,
                     host=self.audit_host, study_uid=study, object_uid=sop,
                     details={"purpose": "result", "found": orig is not None})
        if orig is None or not orig.get("study_uid") or not orig.get("sop_instance_uid"):
            return None
        return orig

    def _build(self, study: str, version: str, kind: str, got: _Collected) -> list[Dataset]:
        sources, identity = got.sources, got.identity
        findings = report.study_findings(s.findings for s in sources)
        pseudos = [s.pseudo_sop for s in sources] + [f"not-analysed:{p}" for _, p, _ in got.not_analysed]
        # The heatmap first: the SR names the heatmap objects that actually go with it.
        heatmaps: list[Dataset] = []
        refs: list[report.HeatmapRef] = []
        if self.send_heatmap and findings and sources:
            top, src = heatmap_choice(findings, sources)
            try:
                heatmaps = self._heatmap(study, version, top, src, identity)
            except TamperError as exc:  # a row points at another instance's object: send nothing
                with self.sessions() as session, session.begin():
                    audit.record_tamper(session, self.keys.audit_key, exc, what="vault", actor=ACTOR,
                                        host=self.audit_host, study_uid=study)
                raise PermanentError(f"stored object failed its check: {exc.reason}") from None
            except Exception as exc:  # the SR still goes out; the overlay is a convenience
                event(log, "result.heatmap_failed", logging.WARNING, study=study, model=version,
                      error=type(exc).__name__ if not isinstance(exc, (ModelError, StorageError)) else str(exc))
            refs = [report.HeatmapRef(report.read_kind(ds), str(ds.SOPInstanceUID), top.label, src.image)
                    for ds in heatmaps]
        objects: list[Dataset] = []
        try:
            if self.send_sr:
                series, sop = report.report_uids(study, version, "sr", pseudos)
                # the same content again (a retry after a lost response) is the same instance, not its own successor
                prior = got.prior[1] if got.prior and got.prior[1].sop_instance_uid != sop else None
                objects.append(report.build_sr(identity, [s.image for s in sources], [s.findings for s in sources],
                                               model=self._identity(version), series_uid=series, sop_uid=sop,
                                               not_analysed=[n for _, _, n in got.not_analysed], replaces=prior,
                                               heatmaps=refs))
        except report.ReportError as exc:  # our own one-line reasons
            raise PermanentError(f"cannot build the structured report: {exc}") from None
        except Exception as exc:  # highdicom refusing odd source values: its text may quote them (PHI)
            raise PermanentError(f"cannot build the structured report ({type(exc).__name__})") from None
        objects.extend(heatmaps)
        if not objects:
            raise PermanentError("nothing to send (results.send_sr and send_heatmap are both off)")
        return objects

    def _content(self, version: str, got: _Collected, objects: list[Dataset]) -> ReportContent:
        """What the STOW-RS/HL7 destinations need beside the objects (HL7 carries the findings itself)."""
        sr = next((ds for ds in objects if report.read_kind(ds) == "sr"), objects[0])
        uid = str(sr.SOPInstanceUID)
        return ReportContent(identity=got.identity, findings=report.study_findings(s.findings for s in got.sources),
                             model=self._identity(version), report_uid=uid,
                             replaces=got.prior is not None and got.prior[1].sop_instance_uid != uid,
                             analysed=len(got.sources), not_analysed=len(got.not_analysed))

    def _describe(self) -> str:
        return " + ".join([self.destination.describe()] + [d.describe() for d in self.destinations])

    def _identity(self, version: str) -> report.ModelIdentity:
        """The model as the report names it; its weights' sha256 (from the manifest, no torch load)
        makes the Device UID differ for every model the registry ever held."""
        identity = self._identities.get(version)
        if identity is None:
            try:
                digest = self.registry.manifest(version).weights_sha256
            except ModelError as exc:  # version removed since it predicted: still report, named by version
                event(log, "result.model_unlisted", logging.WARNING, model=version, error=str(exc))
                digest = ""
            identity = self._identities[version] = report.ModelIdentity(version=version, weights_sha256=digest)
        return identity

    @staticmethod
    def _check(objects: list[Dataset]) -> None:
        """Every object, as the bytes that would be sent, must pass `object_checks`; one that fails
        parks the result (the caller audits it) and nothing of the batch is sent."""
        for ds in objects:
            try:
                check_object(report.to_bytes(ds))
            except ObjectCheckError as exc:
                raise PermanentError(f"{report.read_kind(ds)} failed validation: {exc}") from None
            except Exception as exc:  # pydicom refusing to encode a value: its text may quote it (PHI)
                raise PermanentError(f"{report.read_kind(ds)} failed validation "
                                     f"(cannot encode: {type(exc).__name__})") from None

    def _model(self, version: str) -> LoadedModel:
        """Loaded once per version (Grad-CAM needs the fp32 module); only the latest two kept."""
        model = self._models.get(version)
        if model is None:
            model = self.registry.load(version)
            self._models = {k: v for k, v in list(self._models.items())[-1:]}
            self._models[version] = model
        return model

    def _heatmap(self, study: str, version: str, top: report.Finding, src: _Source,
                 identity: report.StudyIdentity) -> list[Dataset]:
        """The heatmap objects `heatmap_objects` names, from one Grad-CAM of `top` on `src`, under
        UIDs that depend only on that image and finding (`report.heatmap_uids`)."""
        import pydicom
        from io import BytesIO
        from cxrmodel.gradcam import gradcam
        from cxrmodel.preprocess import load_image
        from daemon.dicom import heatmap_map

        if src.vault_object is None:
            raise StorageError("instance has no stored object")
        data = checked_instance(self.vault.get(src.vault_object), src.pseudo_sop, src.vault_object)
        model = self._model(version)
        header = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True)
        orientation = header.get("PatientOrientation", "")
        orientation = "\\".join(orientation) if not isinstance(orientation, str) else orientation
        square = model.manifest.preprocessing.square
        cam = gradcam(model.module, model.preprocess(data), top.label)
        attention = heatmap_map.attention_on_grid(cam, int(header.Rows), int(header.Columns), square)
        objects: list[Dataset] = []
        if "secondary_capture" in self.heatmap_objects:
            picture = report.heatmap_picture(model.module, None, load_image(data), top.label, attention=attention)
            series, sop = report.heatmap_uids(study, version, "heatmap", src.pseudo_sop, top.label)
            objects.append(report.build_heatmap_sc(
                identity, src.image, picture, label=top.label, probability=top.probability, model_version=version,
                series_uid=series, sop_uid=sop, patient_orientation=orientation,
                burned_in_annotation=str(header.get("BurnedInAnnotation", ""))))
        if "segmentation" in self.heatmap_objects:
            series, sop = report.heatmap_uids(study, version, "heatmap_map", src.pseudo_sop, top.label)
            try:
                objects.append(heatmap_map.build_heatmap_map(
                    identity, src.image, header, attention, label=top.label, probability=top.probability,
                    model_version=version, series_uid=series, sop_uid=sop, patient_orientation=orientation,
                    model_name=self._identity(version).name))
            except report.ReportError as exc:  # e.g. a film too large for a map: the SC still goes
                if not objects:
                    raise
                event(log, "result.heatmap_map_failed", logging.WARNING, study=study, model=version, error=str(exc))
        return objects

    # -- recording outcomes ------------------------------------------------------------------------
    def _finish_sent(self, result_id: int, study: str, version: str, got: _Collected, objects: list[Dataset],
                     seconds: float) -> None:
        now = utcnow()
        analysed = [s.instance_id for s in got.sources]
        listed = analysed + [iid for iid, _, _ in got.not_analysed] + got.unlisted
        kinds = [report.read_kind(ds) for ds in objects]
        with self.sessions() as session, session.begin():
            row = session.get(Result, result_id)
            # Images that arrived or were predicted (by this model) while we were sending are not in
            # this report: send a replacement once they settle. Another model's predictions are
            # another row's business.
            by_us = select(Prediction.id).where(Prediction.instance_id == Instance.id,
                                                Prediction.model_version == version).exists()
            newer = session.scalar(
                select(Instance.id).where(Instance.study_uid == study, Instance.reported_at.is_(None),
                                          Instance.id.not_in(listed),
                                          or_(Instance.state == NOT_ANALYSED, (Instance.state == PREDICTED) & by_us))
                .limit(1))
            row.sent_at, row.last_error, row.claimed_by = now, "", ""
            if newer is None:
                row.state = "sent"
            else:
                row.state, row.attempts, row.next_attempt_at = "pending", 0, now
            session.execute(update(Instance).where(Instance.id.in_(analysed), Instance.state == PREDICTED)
                            .values(state=REPORTED, updated_at=now))
            session.execute(update(Instance).where(Instance.id.in_(listed), Instance.reported_at.is_(None))
                            .values(reported_at=now))
            details: dict = {"model": version, "objects": kinds, "instances": len(analysed),
                             "not_analysed": len(got.not_analysed), "destination": self._describe()}
            if got.unlisted:
                details["without_reid_entry"] = len(got.unlisted)
            sr = next((ds for ds in objects if report.read_kind(ds) == "sr"), None)
            if sr is not None:
                prior_id = got.prior[0] if got.prior else None
                same = prior_id is not None and got.prior[1].sop_instance_uid == str(sr.SOPInstanceUID)
                if same:  # the same report again (retry after a lost response): nothing superseded
                    details["report"] = prior_id
                else:
                    sent = SentReport(result_id=result_id, sop_instance_uid=str(sr.SOPInstanceUID),
                                      analysed=len(analysed), not_analysed=len(got.not_analysed), sent_at=now)
                    session.add(sent)
                    session.flush()
                    details["report"] = sent.id
                    if prior_id is not None:
                        session.execute(update(SentReport).where(SentReport.id == prior_id)
                                        .values(superseded_by=sent.id))
                        details["replaces"] = prior_id
            audit.append(session, self.keys.audit_key, event_type="result.sent", actor=ACTOR, host=self.audit_host,
                         study_uid=study, details=details)
        event(log, "result.sent", study=study, model=version, objects=",".join(kinds), instances=len(analysed),
              not_analysed=len(got.not_analysed), replaces=details.get("replaces", ""), seconds=round(seconds, 3))

    def _finish_failed(self, result_id: int, study: str, version: str, attempts: int, error: str,
                       final: bool) -> None:
        now = utcnow()
        delay = retry_delay_s(attempts, self.retry_base_s)
        with self.sessions() as session, session.begin():
            session.execute(update(Result).where(Result.id == result_id).values(
                state="failed" if final else "pending", claimed_by="", last_error=error[:500],
                next_attempt_at=now if final else now + timedelta(seconds=delay)))
            audit.append(session, self.keys.audit_key, event_type="result.failed", outcome=8 if final else 4,
                         actor=ACTOR, host=self.audit_host, study_uid=study,
                         details={"model": version, "attempt": attempts, "final": final, "error": error[:200],
                                  "destination": self._describe()})
        if final:
            event(log, "result.parked", logging.ERROR, study=study, model=version, attempts=attempts, error=error,
                  hint="fix the destination, then `cxrd results retry`")
        else:
            event(log, "result.retry", logging.WARNING, study=study, model=version, attempt=attempts,
                  retry_in_s=round(delay, 2), error=error)


def from_settings(rt, vault: Vault) -> ResultsSender:  # noqa: ANN001 - daemon.runtime.Runtime
    """Translate `[results]` (and our `[dicom]` AE title and TLS files) into a sender.

    With `results.tls` the destination is verified against `dicom.tls.ca` (system store if empty) and
    `dicom.tls.cert`/`key`, when set, are presented as our client certificate.
    """
    s = rt.settings
    r = s.results
    from daemon.stages.destinations.configured import client_tls, destinations_from_settings
    t = s.dicom.tls
    tls = client_tls("results.tls", "dicom.tls ca/cert/key for the destination", ca=t.ca, cert=t.cert,
                     key=t.key) if r.tls else None
    dest = Destination(calling_aet=s.dicom.ae_title, called_aet=r.ae_title, host=r.host, port=r.port, tls=tls)
    return ResultsSender(sessions=rt.sessions, vault=vault, keys=rt.keys, registry=rt.registry, destination=dest,
                         send_sr=r.send_sr, send_heatmap=r.send_heatmap,
                         heatmap_objects=tuple(r.heatmap_objects), max_attempts=r.max_attempts,
                         retry_base_s=r.retry_base_s, audit_host=rt.hostname,
                         settle_quiet_s=r.settle_quiet_s, settle_max_s=r.settle_max_s,
                         destinations=destinations_from_settings(r))
