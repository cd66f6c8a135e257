"""A failed image says which (pseudonymous) instance, what kind of failure and what happens next."""
from __future__ import annotations

import logging

import pydicom  # noqa: F401  - loaded in every worker process; the masking's vocabulary is its dictionary

from daemon.ops.logs import EventFormatter
from daemon.stages.worker import MAX_ATTEMPTS, Prepared, log_failure


def failure_line(caplog, p: Prepared) -> str:  # noqa: ANN001
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cxrd.worker"):
        log_failure(p, "v7")
    (record,) = caplog.records
    return EventFormatter().format(record)


def test_a_retried_failure_names_the_instance_its_class_and_the_next_attempt(caplog):
    p = Prepared(1, 1, "2.25.1111", "2.25.2222", None, error="cannot read image (ValueError)",
                 error_class="ValueError", attempts=1)
    line = failure_line(caplog, p)
    assert "level=warning" in line and "event=worker.failed" in line
    assert "instance=2.25.1111" in line and "study=2.25.2222" in line and "reason_class=ValueError" in line
    assert f"attempt=1 max_attempts={MAX_ATTEMPTS}" in line and 'then="retry in 30 s"' in line


def test_the_last_attempt_is_an_error_and_quoted_values_in_the_message_are_masked(caplog):
    p = Prepared(1, 1, "2.25.1111", "2.25.2222", None, attempts=MAX_ATTEMPTS, error_class="ModelError",
                 error="preprocessing: 'ZZMARKER^NAME' in 'PatientName' of 1.2.826.0.1.3680043.99.1")
    line = failure_line(caplog, p)
    assert "level=error" in line and "then=failed" in line and "reason_class=ModelError" in line
    assert "ZZMARKER" not in line and "1.2.826.0.1.3680043.99.1" not in line and "'PatientName'" in line
