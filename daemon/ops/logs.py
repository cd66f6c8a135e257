"""One line per event on stderr, as logfmt or JSON, and never a patient identifier.

Library code raises exceptions whose messages may quote DICOM values (pydicom does). So tracebacks
are printed as exception *type* and frames only, never the message of an exception we did not write:
a stack trace in the journal can then never leak PHI.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from typing import Any

_SAFE_EXCEPTION_MODULES = ("daemon.", "config.", "storage.", "cxrmodel.")
_OUR_LOGGERS = ("cxrd",)
# Third-party messages (pydicom, pynetdicom, ...) quote element values and UIDs: mask them.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_UIDLIKE = re.compile(r"\b\d+(?:\.\d+){2,}\b")
_LONG_NUMBER = re.compile(r"\b\d{5,}\b")


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
    logger.log(level, name, extra={"cxrd_fields": fields})


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
        fields.update(getattr(record, "cxrd_fields", {}))
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
    if record.name.startswith(_OUR_LOGGERS):
        return text
    text = _QUOTED.sub("<value>", text)
    text = _UIDLIKE.sub("<uid>", text)
    return _LONG_NUMBER.sub("<number>", text)


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        return json.dumps(text)
    return text
