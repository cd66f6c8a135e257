"""ReportIntake.handle answers every message, whatever the parser or labeller does with it."""
from __future__ import annotations

import logging

import pytest

from daemon.hl7 import intake as intake_module
from daemon.hl7.intake import ReportIntake

MSG = (b"MSH|^~\\&|RIS|H|CXRD|CXRD|2026||ORU^R01|C1|P|2.5.1\r"
       b"OBR|1||ACC1|||||||||||||||ACC1|||||||F\rOBX|1|TX|18782-3^F^LN||SECRETTEXT heart normal||||||F\r")


def make(refused: list, label=lambda text: {}, **more) -> ReportIntake:  # noqa: ANN001, ANN003
    """An intake whose refusals (RefusalAudit.record's arguments) are appended to `refused`."""
    return ReportIntake(**{"sessions": None, "vault": None, "keys": None, "label": label, "keep_text": False,
                           "match_wait_s": 60, "application": "CXRD", "facility": "",
                           "on_refused": lambda *a, **k: refused.append((a, k)), **more})


def test_an_unforeseen_parser_failure_is_answered_and_audited_without_the_text(monkeypatch, caplog):
    def broken(raw: bytes):  # noqa: ANN202
        raise ValueError(raw.decode())  # an exception whose message quotes the peer
    monkeypatch.setattr(intake_module.messages, "parse", broken)
    caplog.set_level(logging.DEBUG)
    audited: list = []
    ack = make(audited).handle(MSG, "127.0.0.1")
    assert b"MSA|AE|C1|" in ack
    assert audited == [(("RIS", "127.0.0.1", "message could not be read", "H"), {"ack": "AE", "error": "207"})]
    assert "SECRETTEXT" not in caplog.text and not any(r.exc_info for r in caplog.records)


def test_a_labeller_failure_is_ar(caplog):
    def label(text: str) -> dict:
        raise RuntimeError(text)
    audited: list = []
    ack = make(audited, label).handle(MSG, "127.0.0.1")
    assert b"MSA|AR|C1|" in ack and "SECRETTEXT" not in caplog.text


@pytest.mark.parametrize("raw", [b"", b"\x00" * 10, b"MSH", b"MSH|", b"MSH|^~\\&" + b"|" * 30])
def test_degenerate_messages_get_an_error_ack(raw):
    ack = make([]).handle(raw, "127.0.0.1")
    assert ack.startswith(b"MSH|^~\\&|CXRD|") and b"\rMSA|AE|" in ack and b"\rERR|" in ack


def test_below_the_disk_floor_a_valid_report_is_ar_and_not_recorded():
    """Like images (OUT_OF_RESOURCES), reports are refused while the disk is below storage.min_free_mb:
    a sender must not fill the disk the images need. Recording here would fail (no database)."""
    refused: list = []
    ack = make(refused, keep_text=True, disk_is_low=lambda: True).handle(MSG, "127.0.0.1")
    assert b"MSA|AR|C1|disk below the free-space floor" in ack
    assert refused[0][0][2].startswith("disk below") and refused[0][1]["ack"] == "AR"
