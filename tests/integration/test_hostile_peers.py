"""Hostile network peers against a real `cxrd serve`: PDU length fields that announce gigabytes,
truncated, random and malformed PDUs, and connections that close, stall or trickle before asking
for an association. The daemon must stay alive and small, abort the offender, keep serving a real
push made in parallel, log no traceback, and give every slot back at once or within the short
pre-association timeout. Every test runs with cxrd's receive adjustments and with stock pynetdicom.

Memory bound: the daemon's resident set may grow by at most `RSS_GROWTH_BOUND_KIB` while it is
attacked (the attacks announce up to 4 GiB; a parallel push of a real radiograph needs far less)."""
from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import create_engine, text

from conftest import copy_with_new_uids, dcmtk, storescu

IMAGE = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"
RSS_GROWTH_BOUND_KIB = 256 * 1024
# A-ABORT, source 2 (service provider), reason 6 (invalid PDU parameter value).
ABORT_INVALID_PARAMETER = bytes.fromhex("07000000000400000206")


@pytest.fixture(params=["adjusted", "stock"])
def daemon_factory(request, daemon_factory):  # noqa: ANN001, ANN201
    """The same daemon with cxrd's receive adjustments and with stock pynetdicom."""
    off = {"CXRD_DICOM__RECEIVE_ADJUSTMENTS": "false"} if request.param == "stock" else {}
    return lambda extra=None: daemon_factory({**off, **(extra or {})})


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class PeakRss:
    """Samples a process's resident set every 20 ms while in use; `peak` is the largest seen."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def answer_until_closed(s: socket.socket, seconds: float) -> bytes | None:
    """Everything the daemon sends until it closes the connection; None if still open after `seconds`."""
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return got
        except socket.timeout:
            return None
        if not chunk:
            return got
        got += chunk
    return None


def associate_rq_with_absurd_item_lengths() -> bytes:
    """An A-ASSOCIATE-RQ whose application context and presentation context items claim 65535 bytes."""
    body = (struct.pack(">HH", 1, 0) + b"CXRD".ljust(16) + b"HOSTILE".ljust(16) + bytes(32)
            + struct.pack(">BBH", 0x10, 0, 0xFFFF) + b"1.2.840.10008.3.1.1.1"
            + struct.pack(">BBH", 0x20, 0, 0xFFFF) + bytes(8))
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def established(port: int, aet: str = "HOSTILE", bind: str = "127.0.0.1"):  # noqa: ANN201
    ae = AE(ae_title=aet)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRD", bind_address=(bind, 0))
    assert assoc.is_established
    return assoc


def wait_until(condition, seconds: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def assert_clean_log(d) -> None:  # noqa: ANN001
    log = d.log_text()
    assert "Traceback" not in log and " trace=" not in log, log[-3000:]


def test_oversized_truncated_random_and_malformed_pdus(daemon_factory, shared_data, tmp_path):
    d = daemon_factory({"CXRD_DICOM__PREASSOCIATION_TIMEOUT": "2"}).start()
    first, parallel = copy_with_new_uids(shared_data / IMAGE, tmp_path / "push", 2)
    assert storescu(d.dicom_port, first)[1] == ["Success"]  # warm: the model and the decoders loaded
    baseline = rss_kib(d.proc.pid)
    pushed: dict[str, list[str]] = {}
    with PeakRss(d.proc.pid) as rss:
        # Announced sizes beyond any bound, before any association: refused with an A-ABORT at once.
        for header in ("0100FFFFFFFF", "0400FFFFFFFF", "0700FFFFFFF0", "010000010001"):
            s = connect(d.dicom_port)
            s.sendall(bytes.fromhex(header) + b"\x00" * 10)
            if header == "0100FFFFFFFF":  # a valid push goes on while the first attack is open
                push = threading.Thread(target=lambda: pushed.setdefault(
                    "statuses", storescu(d.dicom_port, parallel)[1]))
                push.start()
            assert answer_until_closed(s, 5.0) == ABORT_INVALID_PARAMETER, header
            s.close()
        # Truncated, random and malformed PDUs: dropped, or aborted, within the pre-association timeout.
        hostile = [bytes.fromhex("010000000100") + os.urandom(10),
                   associate_rq_with_absurd_item_lengths()]
        for pdu_type in range(1, 8):
            n = int.from_bytes(os.urandom(2), "big") % 4096
            hostile.append(struct.pack(">BBL", pdu_type, 0, n) + os.urandom(n))
        hostile += [os.urandom(64) for _ in range(5)]
        for data in hostile:
            s = connect(d.dicom_port)
            s.sendall(data)
            assert answer_until_closed(s, 5.0) is not None, data[:16].hex()
            s.close()
        # After the association is accepted: a P-DATA-TF longer than our advertised maximum.
        for length in (1048576 + 1, 0xFFFFFFFF):
            assoc = established(d.dicom_port)
            assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, length) + b"\x00" * 64)
            assert wait_until(lambda: assoc.is_aborted, 5.0), length
        push.join(120)
    assert pushed["statuses"] == ["Success"]
    assert d.proc.poll() is None
    assert rss.peak - baseline < RSS_GROWTH_BOUND_KIB, (baseline, rss.peak)
    engine = create_engine(f"sqlite:///{d.state_dir / 'cxrd.db'}")
    with engine.connect() as c:
        stored = c.execute(text("SELECT count(*) FROM audit_events WHERE event_type = 'instance.stored'")).scalar()
    engine.dispose()
    assert stored == 2  # the warm-up and the parallel push
    assert "pdu.refused" in d.log_text()
    assert_clean_log(d)


def test_peers_that_close_or_stall_before_associating_free_their_slots(daemon_factory):
    d = daemon_factory({"CXRD_DICOM__PREASSOCIATION_TIMEOUT": "1"}).start()
    for _ in range(50):  # 50 > max_associations (16): each sends a few random bytes and closes
        s = connect(d.dicom_port)
        s.sendall(os.urandom(7))
        s.close()
    time.sleep(0.3)
    t = time.monotonic()
    r = dcmtk("echoscu", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port), timeout=30)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t < 2.0

    silent = [connect(d.dicom_port) for _ in range(16)]  # every slot, holding it without a word
    trickler = connect(d.dicom_port)
    trickled: list[float] = []

    def trickle() -> None:  # one byte of an A-ASSOCIATE-RQ header every 0.2 s, forever
        start = time.monotonic()
        try:
            for b in bytes.fromhex("01000000ffff") + b"\x00" * 1000:
                trickler.sendall(bytes([b]))
                time.sleep(0.2)
        except OSError:
            pass
        trickled.append(time.monotonic() - start)
    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    for s in silent:
        assert answer_until_closed(s, 3.0) is not None  # closed after the 1 s pre-association timeout
        s.close()
    thread.join(5.0)
    assert trickled and trickled[0] < 3.0
    trickler.close()
    assert wait_until(lambda: dcmtk("echoscu", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port),
                                    timeout=30).returncode == 0, 2.0)
    assert d.proc.poll() is None
    assert_clean_log(d)


def test_one_host_cannot_take_every_slot(daemon_factory):
    # 127.0.0.2 is another host here, and must be on the allow-list to show that it still gets in
    d = daemon_factory({"CXRD_DICOM__MAX_ASSOCIATIONS_PER_HOST": "2",
                        "CXRD_DICOM__ALLOWED_HOSTS": '["127.0.0.0/8"]'}).start()
    held = [established(d.dicom_port), established(d.dicom_port)]
    try:
        r = dcmtk("echoscu", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port), timeout=30)
        assert r.returncode != 0  # a third from 127.0.0.1 is closed before any DICOM byte
        other = established(d.dicom_port, bind="127.0.0.2")  # another host still gets in
        other.release()
    finally:
        for assoc in held:
            assoc.release()
    assert wait_until(lambda: dcmtk("echoscu", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port),
                                    timeout=30).returncode == 0, 3.0)
    engine = create_engine(f"sqlite:///{d.state_dir / 'cxrd.db'}")

    def refused_for_host_limit() -> bool:  # refusals are audited off the accept path, within a second
        with engine.connect() as c:
            return any("per-host connection limit reached" in r[0] for r in c.execute(text(
                "SELECT details FROM audit_events WHERE event_type = 'association.rejected'")))
    assert wait_until(refused_for_host_limit, 5.0)
    engine.dispose()
    assert_clean_log(d)
