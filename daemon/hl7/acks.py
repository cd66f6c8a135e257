"""HL7 ACK messages (original acknowledgment mode): AA accepted, AE error in the content, AR refused.

What the peer sent is echoed only after it is cut down to printable ASCII without HL7 delimiters
and to a bounded length (`clean`), so an ACK can never carry a delimiter, a control character or a
frame byte the peer planted. MSA-3 and ERR-8 hold our own one-line reason, which never quotes the
message (no PHI); ERR-3 holds the HL7 table 0357 error code.
"""
from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timezone

AA, AE, AR = "AA", "AE", "AR"
# HL7 table 0357 (message error condition codes) used here
ACCEPTED, SEGMENT_SEQUENCE, REQUIRED_MISSING, DATA_TYPE, TABLE_VALUE = "0", "100", "101", "102", "103"
UNSUPPORTED_TYPE, UNSUPPORTED_EVENT, UNSUPPORTED_PROCESSING, UNSUPPORTED_VERSION = "200", "201", "202", "203"
INTERNAL_ERROR = "207"
_ERROR_TEXT = {ACCEPTED: "Message accepted", SEGMENT_SEQUENCE: "Segment sequence error",
               REQUIRED_MISSING: "Required field missing", DATA_TYPE: "Data type error",
               TABLE_VALUE: "Table value not found", UNSUPPORTED_TYPE: "Unsupported message type",
               UNSUPPORTED_EVENT: "Unsupported event code", UNSUPPORTED_PROCESSING: "Unsupported processing id",
               UNSUPPORTED_VERSION: "Unsupported version id", INTERNAL_ERROR: "Application internal error"}
VERSIONS = ("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")
_SAFE = set(string.ascii_letters + string.digits + " .-_:/+*#@!?=()[]{}<>,;'\"$%")


def clean(value: str, limit: int = 64) -> str:
    """A value from the peer made safe to echo: printable ASCII, no delimiters, at most `limit` chars."""
    return "".join(ch for ch in value if ch in _SAFE)[:limit].strip()


def escape(text: str) -> str:
    """Our own reason text as an HL7 ST value: printable ASCII, delimiters as HL7 escape sequences."""
    text = "".join(ch for ch in text if 32 <= ord(ch) < 127)
    for ch, seq in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        text = text.replace(ch, seq)
    return text


@dataclass(frozen=True)
class Header:
    """The MSH fields an ACK answers, as far as they could be read (all cleaned; "" when unreadable)."""
    sending_application: str = ""
    sending_facility: str = ""
    control_id: str = ""
    processing_id: str = ""
    version: str = ""
    trigger: str = ""


def read_header(raw: bytes) -> Header:
    """The MSH of a raw message, read leniently from its first segment (which may be all we kept of a
    refused frame). Never raises: an unreadable header gives an ACK addressed to nobody in particular."""
    first = raw.split(b"\r", 1)[0].split(b"\n", 1)[0][:4096]
    if len(first) < 8 or first[:3] != b"MSH":
        return Header()
    text = first.decode("latin-1")
    sep = text[3]
    comp = text[4] if len(text) > 4 else "^"
    fields = text.split(sep)  # fields[1] is MSH-2; MSH-n is fields[n-1]

    def f(n: int, component: int = 1) -> str:
        if n - 1 >= len(fields):
            return ""
        parts = fields[n - 1].split(comp) if comp != sep else [fields[n - 1]]
        return parts[component - 1] if component - 1 < len(parts) else ""
    return Header(sending_application=clean(f(3)), sending_facility=clean(f(4)), control_id=clean(f(10), 199),
                  processing_id=clean(f(11), 3), version=clean(f(12), 8), trigger=clean(f(9, 2), 3))


def build_ack(header: Header, code: str, reason: str, error: str, *, application: str, facility: str,
              now: datetime | None = None) -> bytes:
    """The ACK message (segments joined by CR, not framed)."""
    now = now or datetime.now(timezone.utc)
    version = header.version if header.version in VERSIONS else "2.5.1"
    processing = header.processing_id if header.processing_id in ("P", "T", "D") else "P"
    ts = now.strftime("%Y%m%d%H%M%S") + "+0000"
    trigger = header.trigger or "R01"
    reason = escape(reason[:120])
    msh = "|".join(["MSH", "^~\\&", application, facility, header.sending_application, header.sending_facility,
                    ts, "", f"ACK^{trigger}^ACK", "CXRD" + secrets.token_hex(8).upper(), processing, version])
    segments = [msh, "|".join(["MSA", code, header.control_id, reason])]
    if code != AA:
        severity = "E"
        segments.append("|".join(["ERR", "", "", f"{error}^{_ERROR_TEXT.get(error, '')}^HL70357", severity,
                                  "", "", "", reason]))
    return ("\r".join(segments) + "\r").encode("ascii")
