"""The DICOM statuses cxrd answers with are decided in one module, and they are the ones senders
have always heard (a PACS's retry logic depends on them)."""
from __future__ import annotations

import re
from pathlib import Path

from daemon.dicom import statuses

DAEMON = Path(__file__).resolve().parents[3] / "daemon"


def test_each_outcome_answers_with_its_status():
    assert {name: (o.label, o.status) for name, o in vars(statuses).items()
            if isinstance(o, statuses.Outcome)} == {
        "STORED": ("stored", 0x0000), "DUPLICATE": ("duplicate", 0x0000), "IGNORED": ("ignored", 0x0000),
        "REJECTED": ("rejected", 0xC230), "REFUSED_DISK": ("refused_disk", 0xA700),
        "REFUSED_DATABASE": ("refused_database", 0xA700), "UNPARSEABLE": ("unparseable", 0xC210), "REFUSED_PIXELS": ("refused_pixels", 0xC210),
        "REFUSED_SIZE": ("refused_size", 0xC210),
        "UNDEIDENTIFIABLE": ("failed", 0xC220), "REFUSED_BURNED_IN": ("refused_burned_in", 0xC220),
        "FAILED": ("failed", 0xC211)}


def test_no_other_daemon_module_writes_a_status_we_answer_with():
    """Failure, out-of-resources and warning statuses as numbers appear only in statuses.py."""
    literal = re.compile(r"0x(A7|C2|B0)[0-9A-F]{2}\b", re.IGNORECASE)
    offenders = [f"{path.relative_to(DAEMON)}:{n}" for path in DAEMON.rglob("*.py")
                 if path.name != "statuses.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)]
    assert offenders == []


def test_a_peer_kept_our_object_on_success_and_the_store_warnings_only():
    assert statuses.KEPT_BY_PEER == {0x0000, 0xB000, 0xB006, 0xB007}
