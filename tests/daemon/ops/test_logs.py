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
