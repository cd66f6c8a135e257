"""Report matching: a recorded radiology report meets its study, and its labels enter the ground truth.

A report is matched by the pseudonym of the Study Instance UID it carries, else by the keyed hash of
its Accession Number (both computed on arrival with the DICOM de-identification key, so they equal
what ingest wrote on the instances). A report whose images have not arrived waits up to
`hl7.match_wait_s` and is matched by the first pass after they come (ingest wakes this stage);
then it expires, audited, its text shredded. Images of a matched study that arrive later, still
within the wait, get the report's labels too.

Labels are written for the study's analysed instances (a lateral view the model never sees gets
none): per finding, the labeller's positive / negative / uncertain, a finding the report does not
name taken as negative. A manual label is never replaced; a later report (a correction) replaces an
earlier report's labels. With the text kept encrypted, it is labelled again here, so the rules in
force at matching apply; with "discard", the states taken on arrival are used.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Callable

from sqlalchemy.orm import Session, sessionmaker

from cxrmodel.labels import LABELS
from daemon.ops.logs import event
from storage import reports as store
from storage.models import Report, utcnow

log = logging.getLogger("cxrd.report_matching")

Labeller = Callable[[str], dict[str, str]]


def complete_states(named: dict[str, str]) -> dict[str, str]:
    """All 14 findings: the report's states, negative where it names nothing."""
    return {label: named.get(label, "negative") for label in LABELS}


def label_text(text: str) -> dict[str, str]:
    """The labeller's states for the findings a report names (what intake stores on arrival)."""
    from cxrmodel.report_labeller import label_report
    return {label: f.status for label, f in label_report(text).items()}


def match_once(sessions: sessionmaker[Session], vault, audit_key: bytes, match_wait_s: float,  # noqa: ANN001
               label: Labeller = label_text, host: str = "") -> dict[str, int]:
    """One pass: expire what waited too long, match and label what can be. Returns counts."""
    now = utcnow()
    expired = store.expire_waiting(sessions, vault, audit_key, now, host=host)
    with sessions() as s:
        ids = store.candidates(s, now, match_wait_s)
    matched = labelled = 0
    for report_id in ids:
        with sessions() as s:
            report = s.get(Report, report_id)
            if report is None:
                continue
            study, how = store.find_study(s, report)
            if study is None and how != "ambiguous accession":
                continue  # its images have not come: nothing to decrypt or label yet
            text = store.read_text(vault, report) if study is not None else None  # ambiguous: refused unread
        named = label(text) if text is not None else None
        with sessions.begin() as s:
            report = s.get(Report, report_id)
            if report is None or report.state not in (store.WAITING, store.MATCHED, store.LABELLED):
                continue
            study, how = store.find_study(s, report)
            if study is None:
                if how == "ambiguous accession" and report.state == store.WAITING:
                    report.state, report.reason = store.REFUSED, "accession number matches more than one study"
                continue
            if named is None:
                try:
                    named = json.loads(report.findings or "{}")
                except ValueError:
                    named = {}
            was_waiting = report.state == store.WAITING
            written = store.apply_report(s, audit_key, report, study, how, complete_states(named), now, host=host)
            matched += was_waiting
            labelled += written
    if expired or matched or labelled:
        event(log, "reports.matched", matched=matched, labels_written=labelled, expired=expired)
    return {"expired": expired, "matched": matched, "labelled": labelled}


class ReportMatching:
    """A stage: a pass at every wake (a report recorded, an image stored) and every `interval_s`."""
    name = "report-matching"

    def __init__(self, sessions: sessionmaker[Session], vault, audit_key: bytes, match_wait_s: float,  # noqa: ANN001
                 host: str = "", interval_s: float = 10.0):
        self.sessions, self.vault, self.audit_key = sessions, vault, audit_key
        self.match_wait_s, self.host, self.interval_s = match_wait_s, host, interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cxrd-report-matching", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            if self._stop.is_set():
                break
            self._wake.clear()
            try:
                match_once(self.sessions, self.vault, self.audit_key, self.match_wait_s, host=self.host)
            except Exception as exc:  # the database is down, say: try again at the next pass
                event(log, "reports.match_failed", logging.ERROR, error=type(exc).__name__)
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
