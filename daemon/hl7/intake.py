"""One HL7 message in, one ACK out: AA only once the report is durably recorded.

AA  the report was recorded (row + audit committed, text fsynced in the vault when kept) - or it is
    a duplicate of one recorded before (same sender, same MSH-10), recorded once;
AE  the content is wrong (cannot be decoded or parsed, a required field missing, a bad UID);
AR  refused: a message type other than ORU^R01, a frame over hl7.listen.max_message_bytes, an
    unknown character set, the disk below storage.min_free_mb (as for images), or the report could
    not be recorded now (the sender should resend).
Nothing is recorded for AE and AR; each is handed to `on_refused` with our reason only, which the
daemon counts into `report.refused` audit rows (daemon.ops.refusal_audit: one row per sender host,
reason and ACK code each second, however many messages it stands for).
The report text is labelled here, in memory, so that with hl7.report_text = "discard" it never
touches a disk; neither it nor any field of the message is ever logged.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from daemon.hl7 import acks, messages
from daemon.ops.logs import event
from storage.reports import record_report

log = logging.getLogger("cxrd.hl7")

Labeller = Callable[[str], dict[str, str]]      # report text -> {finding: status} for named findings
Observe = Callable[[str], None]                 # outcome: accepted, duplicate, refused, failed
# on_refused(sending application, host, reason, sending facility, ack=AE|AR, error=HL7 error code):
# one refused message (RefusalAudit.record's shape)
Refused = Callable[..., None]
# Parsing and labelling are CPU-bound (one core under the GIL whatever the number of threads) and
# each may build up to messages.MAX_DELIMITERS objects: at most this many messages are parsed at
# once, so that memory does not grow with hl7.listen.max_connections.
PARSING = threading.BoundedSemaphore(2)


class ReportIntake:
    def __init__(self, *, sessions, vault, keys, on_refused: Refused, label: Labeller,  # noqa: ANN001
                 keep_text: bool, match_wait_s: float, application: str, facility: str,
                 observe: Observe | None = None, on_recorded: Callable[[], None] | None = None,
                 on_connection_refused: Callable[[str, str], None] | None = None,
                 disk_is_low: Callable[[], bool] | None = None):
        self.sessions, self.vault, self.keys, self.on_refused = sessions, vault, keys, on_refused
        self.label = label
        self.keep_text = keep_text
        self.match_wait_s = match_wait_s
        self.application, self.facility = application, facility
        self.observe = observe or (lambda outcome: None)
        self.on_recorded = on_recorded or (lambda: None)
        self.on_connection_refused = on_connection_refused or (lambda host, reason: None)
        self.disk_is_low = disk_is_low or (lambda: False)

    def _ack(self, header: acks.Header, code: str, reason: str, error: str = acks.ACCEPTED) -> bytes:
        return acks.build_ack(header, code, reason, error, application=self.application, facility=self.facility)

    def handle(self, raw: bytes, host: str) -> bytes:
        header = acks.read_header(raw)
        with PARSING:
            try:
                parsed = messages.parse(raw)
            except messages.Refusal as r:
                return self._refuse(header, host, r.code, r.error, r.reason)
            except Exception as exc:  # a parser path we did not foresee: answered, never a traceback of peer data
                event(log, "hl7.parse_failed", logging.ERROR, host=host, error=type(exc).__name__)
                return self._refuse(header, host, acks.AE, acks.INTERNAL_ERROR, "message could not be read")
            try:
                findings = self.label(parsed.text)
            except Exception as exc:  # the labeller's rules failed on this text: never quote it
                event(log, "hl7.labeller_failed", logging.ERROR, error=type(exc).__name__)
                return self._refuse(header, host, acks.AR, acks.INTERNAL_ERROR, "report could not be labelled")
        if self.disk_is_low():  # a sender must not fill the disk the images need: the RIS resends later
            return self._refuse(header, host, acks.AR, acks.INTERNAL_ERROR,
                                "disk below the free-space floor; send it again later")
        try:
            rec = record_report(self.sessions, self.vault, self.keys, parsed, findings,
                                keep_text=self.keep_text, match_wait_s=self.match_wait_s, host=host)
        except Exception as exc:  # database or disk: not recorded, so not acknowledged
            event(log, "hl7.record_failed", logging.ERROR, host=host, error=type(exc).__name__)
            self.observe("failed")
            return self._ack(header, acks.AR, "report could not be recorded now; send it again",
                             acks.INTERNAL_ERROR)
        if rec.duplicate:
            self.observe("duplicate")
            event(log, "hl7.duplicate", host=host, report=rec.report_id)
            return self._ack(header, acks.AA, "duplicate of a message already recorded")
        self.observe("accepted")
        event(log, "hl7.report_recorded", host=host, report=rec.report_id, state=rec.state,
              sender=parsed.sender, findings=len(findings))
        self.on_recorded()
        return self._ack(header, acks.AA, "recorded" if not rec.reason else f"recorded, not used: {rec.reason}")

    def too_large(self, head: bytes, host: str, limit: int) -> bytes:
        return self._refuse(acks.read_header(head), host, acks.AR, acks.DATA_TYPE,
                            "message larger than hl7.listen.max_message_bytes")

    def refused_connection(self, host: str, reason: str) -> None:
        self.observe("connection_refused")
        self.on_connection_refused(host, reason)

    def _refuse(self, header: acks.Header, host: str, code: str, error: str, reason: str) -> bytes:
        self.observe("refused")
        try:  # counted, logged and audited off this path (the first of its kind each second logged)
            self.on_refused(header.sending_application[:128], host, reason, header.sending_facility[:128],
                            ack=code, error=error)
        except Exception as exc:
            log.error("hl7.refusal_not_counted", exc_info=exc)
        return self._ack(header, code, reason, error)
