"""One line per event on stderr, as logfmt or JSON, and never a patient identifier.

Library code raises exceptions whose messages may quote DICOM values (pydicom does). So tracebacks
are printed as exception *type* and frames only, never the message of an exception we did not write:
a stack trace in the journal can then never leak PHI.

Mask identifiers, not our own words. What we write (event names and the structured fields passed
with them) is written without PHI and printed as it is. What a library says is masked where a peer's
value could appear: quoted text, UIDs and long numbers become `<value>`, `<uid>`, `<number>` —
except words of the public DICOM vocabulary (data element keywords and names, VR names, the
parameter names pynetdicom quotes, registered UIDs such as transfer syntaxes), which identify no one
and say what the message is about. A peer's value that happens to equal such a word reveals nothing.
"""
from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
import traceback
from typing import Any

_SAFE_EXCEPTION_MODULES = ("daemon.", "config.", "storage.", "cxrmodel.")
_OUR_LOGGERS = ("cxrd",)
# The record attribute that carries an event's structured fields; a record with it is one of ours
# (cxrmodel, below daemon in the layers, passes it as `extra` instead of calling `event`).
FIELDS = "cxrd_fields"
# Third-party messages (pydicom, pynetdicom, ...) quote element values and UIDs: mask them.
# One pass, so that what a rule keeps is never looked at by the next one.
_MASKED = re.compile(r"'(?P<single>[^']*)'|\"(?P<double>[^\"]*)\""
                     r"|(?P<uid>\b\d+(?:\.\d+){2,}\b)|(?P<number>\b\d{5,}\b)")
# Parameter names pynetdicom quotes in its warnings (`Non-conformant 'Called AE Title' value '...'`).
_LIBRARY_WORDS = frozenset({
    "Abstract Syntax Name", "Affected SOP Class UID", "Affected SOP Instance UID", "Application Context Name",
    "Called AE Title", "Calling AE Title", "Implementation Class UID", "Implementation Version Name",
    "Move Destination", "Move Originator AE Title", "Requested SOP Instance UID", "SOP Class UID",
    "Service Class UID", "Transfer Syntax Name", "abstract_syntax", "ae_title", "implementation_class_uid",
    "implementation_version_name", "require_calling_aet"})
_VR_NAMES = frozenset({
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW",
    "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"})


def configure(level: str = "info", fmt: str = "logfmt", stream=None) -> None:  # noqa: ANN001
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(EventFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs PDU and dataset details at debug level: keep it to warnings and above always.
    for noisy in ("pynetdicom", "pydicom", "apscheduler", "alembic", "sqlalchemy", "PIL", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # `warnings.warn` writes straight to stderr, past this formatter; pydicom warns with the offending
    # value quoted (an original UID or date while a result object is written, say). Routed through
    # logging ("py.warnings", not ours), those values are masked like any third-party message.
    logging.captureWarnings(True)


def quiet_pydicom() -> None:
    """pydicom's value-validation warnings quote the offending values; they are not ours to act on.

    Apart from `configure` because importing pydicom takes a good part of a second: a process that
    never reads DICOM (`cxrd status`, the audit commands) should not pay for it.
    """
    from pydicom import config as pydicom_config
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log an event: a dotted name plus key/value fields (which must be free of PHI)."""
    logger.log(level, name, extra={FIELDS: fields})


def safe_exception_text(exc: BaseException) -> str:
    """The message of our own exceptions (written to be safe), only the type name of anyone else's."""
    module = type(exc).__module__ + "."
    if module.startswith(_SAFE_EXCEPTION_MODULES):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


class EventFormatter(logging.Formatter):
    def __init__(self, fmt: str = "logfmt"):
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _message(record),
        }
        fields.update(getattr(record, FIELDS, {}))
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            fields["error"] = safe_exception_text(exc)
            fields["trace"] = " < ".join(
                f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}"
                for f in reversed(traceback.extract_tb(exc.__traceback__)))
        if self.json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())


def _message(record: logging.LogRecord) -> str:
    """Our events verbatim (they are written without PHI); anyone else's with values masked."""
    text = record.getMessage()
    if record.name.startswith(_OUR_LOGGERS) or hasattr(record, FIELDS):
        return text
    return mask(text)


def mask(text: str) -> str:
    """`text` with every value a peer could have sent masked and the DICOM vocabulary kept."""
    return _MASKED.sub(_masked, text)


def _masked(match: re.Match) -> str:
    if match.group("uid") is not None:
        return match.group(0) if _registered_uid(match.group("uid")) else "<uid>"
    if match.group("number") is not None:
        return "<number>"
    inner = match.group("single") if match.group("single") is not None else match.group("double")
    return match.group(0) if _vocabulary(inner) else "<value>"


def _vocabulary(word: str) -> bool:
    """A word of the public DICOM vocabulary, never a value that identifies anyone."""
    if word in _LIBRARY_WORDS or word in _VR_NAMES:
        return True
    dictionary = _dicom_dictionary()
    return dictionary is not None and (word in dictionary[0] or word in dictionary[1] or _registered_uid(word))


def _registered_uid(uid: str) -> bool:
    dictionary = _dicom_dictionary()
    return dictionary is not None and uid in dictionary[2]


@functools.cache
def _loaded_dictionary() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    from pydicom import datadict, uid
    names = frozenset(entry[2] for entry in datadict.DicomDictionary.values())
    return frozenset(datadict.keyword_dict), names, frozenset(uid.UID_dictionary)


def _dicom_dictionary() -> tuple[frozenset[str], frozenset[str], frozenset[str]] | None:
    """pydicom's keywords, element names and registered UIDs; None while pydicom is not loaded
    (a process that reads no DICOM must not pay for importing it, and hears nothing from it)."""
    if "pydicom" not in sys.modules:
        return None
    return _loaded_dictionary()


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        return json.dumps(text)
    return text
