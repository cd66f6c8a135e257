"""Log lines never carry a patient identifier, including what third-party libraries say."""
from __future__ import annotations

import io
import logging
import subprocess
import sys

SNIPPET = """
import warnings
from daemon.ops import logs
logs.configure("info", "logfmt")
warnings.warn("Invalid value for VR UI: '1.2.840.99999.ZZMARKER'. Please see the standard")
warnings.warn("Invalid value for VR DA: '1990ZZMARKER'.")
logs.event(__import__("logging").getLogger("cxrd.test"), "test.done")
"""


def test_library_warnings_reach_the_log_masked_never_stderr_verbatim():
    # A fresh interpreter: capturing warnings changes process-wide state pytest also uses.
    r = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ZZMARKER" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if "logger=py.warnings" in line]
    assert len(lines) == 2 and all("<value>" in line for line in lines), r.stderr
    assert "event=test.done" in r.stderr


def test_our_events_are_verbatim_and_third_party_values_masked():
    from daemon.ops.logs import EventFormatter
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EventFormatter("logfmt"))
    for name, text in (("cxrd.test_logs", "study.done"), ("pynetdicom.test_logs", "Non-conformant 'ZZ^NAME' value 1.2.3.4567")):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False
        logger.warning(text)
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "event=study.done" in out
    assert "ZZ^NAME" not in out and "1.2.3.4567" not in out and "<value>" in out and "<uid>" in out


def _format(logger_name: str, message: str, **extra) -> str:  # noqa: ANN003
    from daemon.ops.logs import EventFormatter
    record = logging.LogRecord(logger_name, logging.WARNING, __file__, 1, message, None, None)
    for k, v in extra.items():
        setattr(record, k, v)
    return EventFormatter("logfmt").format(record)


def test_library_messages_keep_the_dicom_vocabulary_readable():
    import pydicom  # noqa: F401  - the vocabulary is pydicom's dictionary, loaded in any DICOM process
    out = _format("pynetdicom.utils", "Non-conformant 'Affected SOP Instance UID' value '1.2.840.99.ZZMARKER'")
    assert "'Affected SOP Instance UID'" in out and "ZZMARKER" not in out and "value <value>" in out
    out = _format("pynetdicom.dimse_messages", "Non-conformant VM 2 for 'AffectedSOPClassUID', taking the first value")
    assert "'AffectedSOPClassUID'" in out
    out = _format("py.warnings", "Invalid value for VR 'DA': '19900101' in 'PatientBirthDate'")
    assert "'DA'" in out and "'PatientBirthDate'" in out and "19900101" not in out
    out = _format("pynetdicom.acse", "The Transfer Syntax Name '1.2.840.10008.1.2.4.50' is fine, "
                                     "1.2.840.10008.1.2.1 too, not 1.2.826.0.1.3680043.2.1125.987654")
    assert "'1.2.840.10008.1.2.4.50'" in out and "1.2.840.10008.1.2.1 too" in out
    assert "987654" not in out and "<uid>" in out


def test_peer_values_stay_masked_even_beside_the_vocabulary():
    import pydicom  # noqa: F401
    for planted in ("ZZMARKER^NAME", "DOE^JANE", "ZZ HOSPITAL", "2.25.123456789012345678", "1990ZZ"):
        out = _format("pynetdicom.utils", f"Non-conformant 'Calling AE Title' value '{planted}'")
        assert planted not in out and "'Calling AE Title'" in out, out
        out = _format("pydicom.valuerep", f'Invalid value for VR PN: "{planted}"')
        assert planted not in out, out
    out = _format("pydicom.valuerep", "length 1234567 of 2.25.1234567 for ZZMARKER")
    assert "1234567" not in out


def test_our_structured_fields_are_written_as_they_are_whatever_the_logger():
    fields = {"backend": "onnx", "images_per_s": "fp32:14.03,onnx:25.1", "vr": "DA"}
    out = _format("cxrmodel.engine", "engine.backend_chosen", cxrd_fields=fields)
    assert "event=engine.backend_chosen" in out and "backend=onnx" in out
    assert "images_per_s=fp32:14.03,onnx:25.1" in out and "vr=DA" in out and "<value>" not in out
