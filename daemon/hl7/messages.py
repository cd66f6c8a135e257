"""What cxrd reads from an HL7 v2 radiology report message, and from which fields.

Decoding: MSH-18 (character set) decides the codec, and decoding is strict (a byte the declared set
does not have is an AE); a message without MSH-18 is read as ISO 8859-1, the HL7 default that every
byte decodes under. NUL and other control characters (but CR, LF, TAB) are an AE.

Read (first non-empty wins, in this order):
- Message type MSH-9 (ORU^R01 accepted), control id MSH-10 (required), processing id MSH-11 (P or
  T; D debug is refused), sender MSH-3 / MSH-4.
- Study Instance UID: ZDS-1.1 (the IHE Scheduled Workflow Z-segment most RIS send), IPC-3 (v2.5+
  imaging procedure control), an OBX whose OBX-3 is DCM 113014 or names "Study Instance UID" (OBX-5).
- Accession Number: IPC-1, OBR-18 (placer field 1, where IHE SWF puts it for v2.3.1), OBR-3 (filler
  order number), ORC-3.
- Result status OBR-25 (F final and C corrected are ground truth; others are recorded, not used).
- Report text: OBX-5 of every OBX whose value type (OBX-2) is TX, FT, ST or CE-less text, the
  repetitions one line each, HL7 escapes undone (`unescape`). An OBX whose OBX-3 names the impression (LOINC
  19005-8, or an identifier ending "IMP"/"&IMP") is given an "IMPRESSION:" heading and one naming the
  findings (18782-3, "GDT") a "FINDINGS:" heading, unless its text already starts with a heading.
"""
from __future__ import annotations

import re

import hl7

from daemon.hl7 import acks
from storage.reports import IncomingReport  # what parsing yields is what is recorded

ACCEPTED_TYPES = {("ORU", "R01")}
CHARSETS = {"": "latin-1", "ASCII": "ascii", "8859/1": "latin-1", "8859/15": "iso8859-15",
            "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8", "8859/2": "iso8859-2", "8859/5": "iso8859-5",
            "8859/7": "iso8859-7", "8859/9": "iso8859-9"}
TEXT_TYPES = ("TX", "FT", "ST")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HEADING = re.compile(r"^\s*[A-Za-z ]{3,30}:")
MAX_TEXT = 256 * 1024  # characters of report text; a radiology report is a few thousand
# python-hl7 builds a list per field, repetition, component and subcomponent: about 430 bytes of
# memory per delimiter, so a 1 MiB frame of "^" would cost some 450 MiB and seconds of CPU. These
# bound what one message can make the parser build (about 17 MiB and a fraction of a second) far
# above any radiology report (a few hundred segments, a few thousand delimiters when each report
# line is its own OBX).
MAX_SEGMENTS = 2000
MAX_DELIMITERS = 40_000
MAX_FORMAT_REPEAT = 10  # `.sp n` / `.sk n` give at most this many line breaks / spaces


class Refusal(Exception):
    """A message answered AE (content) or AR (refused); the reason is ours, never the message's words."""

    def __init__(self, code: str, error: str, reason: str):
        super().__init__(reason)
        self.code, self.error, self.reason = code, error, reason


def _charset(raw: bytes) -> str:
    first = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]  # segments may end in LF (read as CR below)
    if len(first) < 4:
        return ""
    fields = first.split(first[3:4])
    value = fields[17] if len(fields) > 17 else b""
    return value.split(b"~")[0].split(b"^")[0].decode("ascii", "replace").strip().upper()


def decode(raw: bytes) -> str:
    charset = _charset(raw)
    codec = CHARSETS.get(charset)
    if codec is None:
        raise Refusal(acks.AR, acks.TABLE_VALUE, "character set (MSH-18) not supported")
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        raise Refusal(acks.AE, acks.DATA_TYPE, "bytes not valid in the declared character set (MSH-18)") from None
    if _CONTROL.search(text):
        raise Refusal(acks.AE, acks.DATA_TYPE, "control characters in the message")
    return text


def _formatting(value: str) -> str:
    """An FT formatting command (`.br`, `.sp3`, `.in+4`, ...) as plain text. A count is the peer's,
    so it is capped: `\\.sp99999999\\` must not become a hundred million line breaks."""
    command, arg = value[:3], value[3:]
    try:
        count = min(max(int(arg), 1), MAX_FORMAT_REPEAT) if arg.strip("+- ") else 1
    except ValueError:
        count = 1
    if command in (".br", ".ce"):
        return "\n"
    if command == ".sp":
        return "\n" * count
    if command in (".in", ".ti", ".sk"):
        return " " * (count if command == ".sk" else 4)
    return ""  # .fi, .nf and anything unknown: no text


def unescape(value: str, esc: str, separators: str) -> str:
    """An HL7 text value with its escape sequences undone (HL7 v2 chapter 2, escape sequences).

    Ours, not python-hl7's `unescape`, which logs the whole field (the report text) with a traceback
    on an escape it cannot read, raises on a bad `.sp` count and repeats `.sp` without a bound.
    \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ give the delimiters, \\Xhh..\\ bytes (a control character or a bad hex
    string is a Refusal), FT formatting commands line breaks and spaces; highlighting (\\H\\ \\N\\),
    character set switches (\\C..\\ \\M..\\) and local escapes (\\Z..\\) give nothing. An escape
    character without its closing one is kept as text.
    """
    if not esc or esc not in value:
        return value
    field, rep, comp, sub = separators[1], separators[2], separators[3], separators[4]
    simple = {"F": field, "S": comp, "T": sub, "R": rep, "E": esc, "H": "", "N": ""}
    out: list[str] = []
    at = 0
    while True:
        start = value.find(esc, at)
        if start < 0:
            out.append(value[at:])
            break
        end = value.find(esc, start + 1)
        if end < 0:
            out.append(value[at:])
            break
        out.append(value[at:start])
        seq = value[start + 1:end]
        if seq in simple:
            out.append(simple[seq])
        elif seq.startswith("X"):
            try:
                decoded = bytes.fromhex(seq[1:]).decode("latin-1")
            except ValueError:
                raise Refusal(acks.AE, acks.DATA_TYPE, "invalid hexadecimal escape sequence") from None
            if _CONTROL.search(decoded):
                raise Refusal(acks.AE, acks.DATA_TYPE, "control characters in the message")
            out.append(decoded)
        elif seq.startswith("."):
            out.append(_formatting(seq))
        at = end + 1
    return "".join(out)


def _f(seg, n: int, comp: int = 1, rep: int = 1) -> str:  # noqa: ANN001 - hl7.Segment
    try:
        field = seg[n]
    except IndexError:
        return ""
    if isinstance(field, str):
        return field if comp == 1 and rep == 1 else ""
    try:
        r = field[rep - 1]
    except IndexError:
        return ""
    if isinstance(r, str):
        return r if comp == 1 else ""
    try:
        c = r[comp - 1]
    except IndexError:
        return ""
    return str(c)  # subcomponents kept, joined: "1.2&3.4" must not be read as the UID "1.2"


def _segments(msg, name: str) -> list:  # noqa: ANN001, ANN202
    try:
        return list(msg.segments(name))
    except KeyError:
        return []


def _first(*values: str) -> str:
    return next((v.strip() for v in values if v and v.strip()), "")


def parse(raw: bytes) -> IncomingReport:
    """The report in a raw message, or Refusal saying why not."""
    text = decode(raw).replace("\r\n", "\r").replace("\n", "\r")
    if not text.startswith("MSH") or len(text) < 8:
        raise Refusal(acks.AE, acks.SEGMENT_SEQUENCE, "message does not start with an MSH segment")
    _check_size(text)
    try:
        msg = hl7.parse(text)
        msh = msg.segment("MSH")
    except Exception:  # python-hl7 raises several types on malformed input
        raise Refusal(acks.AE, acks.SEGMENT_SEQUENCE, "message cannot be parsed as HL7 v2") from None
    mtype, trigger = _f(msh, 9).strip().upper(), _f(msh, 9, 2).strip().upper()
    control_id = _f(msh, 10).strip()
    if not control_id:
        raise Refusal(acks.AE, acks.REQUIRED_MISSING, "message control id (MSH-10) missing")
    if len(control_id) > 199:
        raise Refusal(acks.AE, acks.DATA_TYPE, "message control id (MSH-10) too long")
    if (mtype, trigger) not in ACCEPTED_TYPES:
        error = acks.UNSUPPORTED_TYPE if mtype != "ORU" else acks.UNSUPPORTED_EVENT
        raise Refusal(acks.AR, error, "only ORU^R01 report messages are accepted")
    if _f(msh, 11).strip().upper()[:1] == "D":
        raise Refusal(acks.AR, acks.UNSUPPORTED_PROCESSING, "debugging messages (MSH-11 D) are not recorded")
    obrs, obxs = _segments(msg, "OBR"), _segments(msg, "OBX")
    if not obrs:
        raise Refusal(acks.AE, acks.SEGMENT_SEQUENCE, "no OBR segment")
    obr = obrs[0]
    ipc = (_segments(msg, "IPC") or [None])[0]
    orc = (_segments(msg, "ORC") or [None])[0]
    zds = (_segments(msg, "ZDS") or [None])[0]
    study = _first(_f(zds, 1) if zds is not None else "", _f(ipc, 3) if ipc is not None else "",
                   *(_f(o, 5) for o in obxs if _is_study_uid(o)))
    if study and not re.fullmatch(r"[0-9]+(\.[0-9]+)*", study) or len(study) > 64:
        raise Refusal(acks.AE, acks.DATA_TYPE, "Study Instance UID is not a valid UID")
    accession = _first(_f(ipc, 1) if ipc is not None else "", _f(obr, 18), _f(obr, 3),
                       _f(orc, 3) if orc is not None else "")
    if len(accession) > 64:
        raise Refusal(acks.AE, acks.DATA_TYPE, "accession number too long")
    if msg.separators[4] in accession or msg.esc in accession:
        raise Refusal(acks.AE, acks.DATA_TYPE, "accession number holds HL7 delimiters or escapes")
    report = _report_text(msg, obxs)
    if not report.strip():
        raise Refusal(acks.AE, acks.REQUIRED_MISSING, "no report text (OBX-5 of a TX, FT or ST observation)")
    if len(report) > MAX_TEXT:
        raise Refusal(acks.AR, acks.DATA_TYPE, "report text too long")
    sender = "^".join(p for p in (acks.clean(_f(msh, 3)), acks.clean(_f(msh, 4))) if p) or "(unnamed)"
    return IncomingReport(sender=sender, message_type=f"{mtype}^{trigger}", control_id=control_id,
                  result_status=_f(obr, 25).strip().upper()[:1], study_uid=study, accession=accession,
                  text=report)


def _check_size(text: str) -> None:
    """Refuse (AR) a message whose structure would cost the parser more than the bounds allow."""
    if text.count("\r") > MAX_SEGMENTS:
        raise Refusal(acks.AR, acks.DATA_TYPE, f"more than {MAX_SEGMENTS} segments")
    sep = text[3]
    delimiters = {sep, *text[4:].split(sep, 1)[0][:4]}
    if sum(text.count(d) for d in delimiters) > MAX_DELIMITERS:
        raise Refusal(acks.AR, acks.DATA_TYPE, f"more than {MAX_DELIMITERS} fields, components and repetitions")


def _is_study_uid(obx) -> bool:  # noqa: ANN001
    code, name = _f(obx, 3).strip(), _f(obx, 3, 2).lower()
    return code == "113014" or "study instance uid" in name


def _report_text(msg, obxs: list) -> str:  # noqa: ANN001
    parts: list[str] = []
    for obx in obxs:
        if _f(obx, 2).strip().upper() not in TEXT_TYPES or _is_study_uid(obx):
            continue
        try:
            reps = [str(r) for r in obx[5]]
        except IndexError:
            continue
        lines = [unescape(r, msg.esc, msg.separators).replace("\r", "\n") for r in reps]
        body = "\n".join(lines).strip()
        if not body:
            continue
        heading = _heading(_f(obx, 3).strip().upper(), _f(obx, 3, 2).strip().upper())
        if heading and not _HEADING.match(body):
            body = f"{heading}: {body}"
        parts.append(body)
    return "\n".join(parts)


def _heading(code: str, name: str) -> str:
    if code == "19005-8" or code.endswith("IMP") or "IMPRESSION" in name:
        return "IMPRESSION"
    if code == "18782-3" or code.endswith("GDT") or "FINDINGS" in name:
        return "FINDINGS"
    return ""
