"""HL7 v2.5.1 ORU^R01 with the study's findings as OBX segments, sent over MLLP, waiting for the ACK.

The message: MSH; PID with the ORIGINAL patient identifiers (as the SR carries them); OBR for the
chest radiograph (universal service SCT 399208008 "Plain chest X-ray", Accession Number as filler
order number and placer field 1, result status F, or C for a report that replaces an earlier one);
then OBX segments: the Study Instance UID (DCM 110180), the algorithm name and version (DCM
111001/111003, as TID 4019), per finding a group sharing one OBX-4 sub-ID (the call as CWE under
the finding's code from `daemon.dicom.finding_codes`, Present/Absent in SNOMED CT; the probability
and the operating point as NM, DCM 122157/122411, UCUM unit {probability}), and comment OBXs (DCM
121106) with the disclaimer and how the study value combines the images. Every value is escaped
(PS HL7 2.5.1 2.7: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\, line breaks as \\X0D\\/\\X0A\\), so no identifier can
add a field or a segment.

MSH-10 (message control ID) is derived from the report's SOP Instance UID: a retry of the same
report is the same message to a receiver that deduplicates by control ID.

ACK rules: MSA-1 AA or CA = delivered; AE or CE = the receiver failed to process it, retried under
`results.max_attempts` with its reason; AR or CR = refused, parked at once; no ACK within the
timeout, a connection error, or an ACK for another control ID = retried. The ACK is read up to
`MAX_ACK` bytes; the receiver's text is kept printable, short, and with the identifiers we sent
redacted before it reaches a log or a row.
"""
from __future__ import annotations

import hashlib
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from pydicom.dataset import Dataset

from daemon.dicom import finding_codes as codes
from daemon.dicom import result_objects as report
from daemon.stages.destinations.content import ReportContent
from daemon.stages.destinations.errors import RefusedError, SendError

START, END = b"\x0b", b"\x1c\x0d"
MAX_ACK = 64 * 1024
VERSION = "2.5.1"
STUDY_UID = ("110180", "Study Instance UID", "DCM")
ALGORITHM_NAME = ("111001", "Algorithm Name", "DCM")
ALGORITHM_VERSION = ("111003", "Algorithm Version", "DCM")
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\r": "\\X0D\\",
            "\n": "\\X0A\\"}


@dataclass(frozen=True)
class Hl7Destination:
    host: str
    port: int
    sending_application: str = "CXRD"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    tls: ssl.SSLContext | None = None
    timeout_s: float = 30.0

    def describe(self) -> str:
        return f"HL7 MLLP {self.host}:{self.port}" + (" (TLS)" if self.tls else "")

    def send(self, objects: list[Dataset], content: ReportContent) -> None:
        message = build_oru(content, self)
        ack = exchange(self, frame(message))
        check_ack(ack, control_id(content.report_uid), self.describe(), _identifiers(content))


def escape(value: object) -> str:
    """One HL7 value with every delimiter escaped and other control characters dropped."""
    text = "".join(_ESCAPES.get(c, c) for c in str(value))
    return "".join(c for c in text if c >= " " or c == "\t")


def control_id(report_uid: str) -> str:
    """MSH-10: 20 characters (the field's length in 2.5.1), the same for the same report."""
    return hashlib.sha256(report_uid.encode()).hexdigest()[:20].upper()


def _cwe(code: str, meaning: str, scheme: str) -> str:
    return "^".join(escape(v) for v in (code, meaning, scheme))


def _xpn(dicom_name: str) -> str:
    """DICOM PN (family^given^middle^prefix^suffix, first component group) as HL7 XPN
    (family^given^middle^suffix^prefix), each component escaped."""
    parts = (dicom_name.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    return "^".join(escape(p) for p in (family, given, middle, suffix, prefix)).rstrip("^")


def build_oru(content: ReportContent, dest: Hl7Destination, now: datetime | None = None) -> bytes:
    """The ORU^R01 as bytes (segments ended by CR, UTF-8)."""
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%d%H%M%S%z")
    ident = content.identity
    status = "C" if content.replaces else "F"
    msh = ["MSH", "^~\\&", escape(dest.sending_application), escape(dest.sending_facility),
           escape(dest.receiving_application), escape(dest.receiving_facility), stamp, "", "ORU^R01^ORU_R01",
           control_id(content.report_uid), "P", VERSION, "", "", "AL", "NE", "", "UNICODE UTF-8"]
    pid_cx = escape(ident.patient_id) + (f"^^^{escape(ident.issuer_of_patient_id)}"
                                         if ident.issuer_of_patient_id else "")
    pid = ["PID", "1", "", pid_cx, "", _xpn(ident.patient_name)]
    accession = escape(ident.accession_number)
    obr = ["OBR", "1", "", accession, _cwe(*_triple(codes.PLAIN_CHEST_XRAY)), "", "", escape(ident.study_date),
           "", "", "", "", "", "", "", "", "", "", accession, "", "", "", stamp, "", "RAD", status]
    segments = ["|".join(msh), "|".join(pid), "|".join(obr)]
    n = 0

    def obx(value_type: str, ident_cwe: str, sub_id: str, value: str, units: str = "") -> None:
        nonlocal n
        n += 1
        segments.append("|".join(["OBX", str(n), value_type, ident_cwe, sub_id, value, units,
                                  "", "", "", "", status, "", "", stamp]))

    obx("ST", _cwe(*STUDY_UID), "", escape(ident.study_uid))
    obx("ST", _cwe(*ALGORITHM_NAME), "", escape(content.model.name))
    obx("ST", _cwe(*ALGORITHM_VERSION), "", escape(content.model.version))
    unit = _cwe(*_triple(codes.PROBABILITY_UNIT))
    for k, f in enumerate(content.findings, start=1):
        call = codes.PRESENT if f.positive else codes.ABSENT
        obx("CWE", _cwe(*_triple(codes.finding_code(f.label))), str(k), _cwe(*_triple(call)))
        obx("NM", _cwe(*_triple(codes.PROBABILITY)), str(k), f"{f.probability:.4f}", unit)
        obx("NM", _cwe(*_triple(codes.THRESHOLD_VALUE)), str(k), f"{f.threshold:.4f}", unit)
    notes = list(content.notes)
    if not content.findings:
        notes.append(f"No image of this study was analysed ({content.not_analysed} not analysed: the model is "
                     "for frontal chest radiographs only).")
    elif content.analysed > 1:
        notes.append(report.COMBINATION_RULE)
    if content.replaces:
        notes.append("This report replaces the one sent earlier for this study.")
    notes.append(report.DISCLAIMER)
    for text in notes:
        obx("TX", _cwe(*_triple(codes.COMMENT)), "", escape(text))
    return ("\r".join(segments) + "\r").encode("utf-8")


def _triple(code) -> tuple[str, str, str]:  # noqa: ANN001 - pydicom Code
    return str(code.value), str(code.meaning), str(code.scheme_designator)


def frame(message: bytes) -> bytes:
    """MLLP block: <VT> message <FS><CR>."""
    return START + message + END


def exchange(dest: Hl7Destination, block: bytes) -> bytes:
    """Send one MLLP block and read the ACK block; bounded in size and in total time."""
    where = dest.describe()
    deadline = time.monotonic() + dest.timeout_s
    try:
        sock = socket.create_connection((dest.host, dest.port), timeout=min(dest.timeout_s, 10.0))
    except OSError as exc:
        raise SendError(f"{where} not reachable ({type(exc).__name__})") from None
    try:
        if dest.tls is not None:
            sock = dest.tls.wrap_socket(sock, server_hostname=dest.host)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        sock.sendall(block)
        buf = bytearray()
        while END not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SendError(f"{where}: no ACK within {dest.timeout_s:g}s")
            sock.settimeout(left)
            chunk = sock.recv(4096)
            if not chunk:
                raise SendError(f"{where} closed the connection before a complete ACK")
            buf += chunk
            if len(buf) > MAX_ACK:
                raise SendError(f"{where}: ACK larger than {MAX_ACK} bytes")
    except socket.timeout:
        raise SendError(f"{where}: no ACK within {dest.timeout_s:g}s") from None
    except ssl.SSLError as exc:
        raise SendError(f"{where}: TLS failed ({exc.reason or type(exc).__name__})") from None
    except OSError as exc:
        raise SendError(f"{where}: connection failed ({type(exc).__name__})") from None
    finally:
        sock.close()
    start = buf.find(START)
    return bytes(buf[start + 1 if start >= 0 else 0:buf.find(END)])


def _identifiers(content: ReportContent) -> list[str]:
    i = content.identity
    values = [i.patient_id, i.accession_number, i.study_uid, i.issuer_of_patient_id]
    values += [p for p in i.patient_name.replace("=", "^").split("^")]
    return [v for v in values if len(v) >= 2]


def _clean(text: str, identifiers: list[str]) -> str:
    """Receiver text fit for a log line: printable, short, with what we sent about the patient removed."""
    for v in sorted(identifiers, key=len, reverse=True):
        text = text.replace(v, "[redacted]")
    text = "".join(c if " " <= c <= "~" else " " for c in text)
    return " ".join(text.split())[:120]


def check_ack(ack: bytes, expected_id: str, where: str, identifiers: list[str]) -> None:
    """Return when the ACK accepts message `expected_id`; SendError/RefusedError otherwise."""
    text = ack.decode("utf-8", errors="replace")
    segments = [s for s in text.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        raise SendError(f"{where}: the answer is not an HL7 ACK")
    sep = segments[0][3]
    msa = next((s.split(sep) for s in segments if s.startswith("MSA" + sep)), None)
    if msa is None or len(msa) < 2:
        raise SendError(f"{where}: the ACK has no MSA segment")
    code = msa[1].strip().upper()
    if len(msa) > 2 and msa[2].strip() and msa[2].strip() != expected_id:
        raise SendError(f"{where}: the ACK is for another message")
    if code in ("AA", "CA"):
        return
    reason = msa[3] if len(msa) > 3 else ""
    err = next((s.split(sep) for s in segments if s.startswith("ERR" + sep)), None)
    if not reason and err is not None:
        reason = " ".join(f for f in err[1:] if f)
    reason = _clean(reason, identifiers)
    detail = f" ({reason})" if reason else ""
    if code in ("AR", "CR"):
        raise RefusedError(f"{where} rejected the ORU^R01: MSA-1 {code}{detail}")
    if code in ("AE", "CE"):
        raise SendError(f"{where} could not process the ORU^R01: MSA-1 {code}{detail}")
    raise SendError(f"{where}: unknown acknowledgment code {_clean(code, identifiers)[:4]!r}")
