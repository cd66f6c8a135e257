"""What hospital IT sees: systemd notifications, health, readiness and Prometheus metrics."""
from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request

from conftest import storescu


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_health_readiness_and_metrics_after_a_push(daemon_factory, shared_data):
    d = daemon_factory().start()
    assert http_get(d.http_port, "/healthz") == (200, "ok\n")
    assert http_get(d.http_port, "/readyz") == (200, "ready\n")
    assert storescu(d.dicom_port, shared_data / "dicom/derived/nih_00000001_000_explicit-vr-le.dcm")[1] == ["Success"]
    time.sleep(5.5)  # database-derived gauges are cached for 5 s
    code, text = http_get(d.http_port, "/metrics")
    assert code == 200
    assert 'cxrd_instances_total{outcome="stored"} 1.0' in text
    assert 'cxrd_associations_total{outcome="accepted"} 1.0' in text
    assert "cxrd_receive_seconds_count 1.0" in text
    assert "cxrd_queue_depth 1.0" in text  # no model yet: the job waits
    assert 'cxrd_instances{state="received"} 1.0' in text
    assert "cxrd_database_up 1.0" in text and "cxrd_disk_below_floor 0.0" in text
    head = [line for line in text.splitlines() if line.startswith("cxrd_audit_chain_head ")]
    assert head and float(head[0].split()[1]) >= 2
    assert http_get(d.http_port, "/nothing")[0] == 404


def test_disk_floor_makes_the_daemon_not_ready_and_says_why(daemon_factory):
    d = daemon_factory({"CXRD_STORAGE__MIN_FREE_MB": str(1 << 40)}).start()
    assert http_get(d.http_port, "/healthz")[0] == 200
    code, text = http_get(d.http_port, "/readyz")
    assert code == 503 and "disk below the free-space floor" in text


def test_serve_notifies_systemd_ready_watchdog_and_stopping(daemon_factory, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.settimeout(30)
    d = daemon_factory({"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000000"})
    d.start()
    messages: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("WATCHDOG=1" in m for m in messages):
        messages.append(listener.recv(4096).decode())
    ready = [m for m in messages if "READY=1" in m]
    assert ready, messages
    assert f"DICOM CXRD@127.0.0.1:{d.dicom_port}" in ready[0]
    # READY=1 came only after the port was bound: the port answers now, and did before READY.
    assert any("WATCHDOG=1" in m for m in messages)
    assert d.stop(signal.SIGTERM) == 0
    rest = []
    listener.settimeout(2)
    try:
        while True:
            rest.append(listener.recv(4096).decode())
    except socket.timeout:
        pass
    assert any("STOPPING=1" in m for m in rest)
    listener.close()


def test_http_port_in_use_is_a_clear_error(daemon_factory):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    d = daemon_factory({"CXRD_HTTP__PORT": str(blocker.getsockname()[1])})
    r = d.cli("serve", timeout=60)
    assert r.returncode == 1
    assert "cannot listen for HTTP on 127.0.0.1" in r.stderr and "Traceback" not in r.stderr
    blocker.close()


def test_rows_cut_from_the_audit_tail_are_noticed_against_the_anchor(daemon_factory, shared_data):
    """The running daemon anchors the head outside the database (file and journal); someone with
    database access deleting the newest rows makes the head go backwards, which the daemon logs as an
    error and exports as cxrd_audit_chain_behind_anchor 1, and `cxrd audit verify` reports."""
    import sqlite3
    from storage import audit_anchor
    d = daemon_factory({"CXRD_STORAGE__AUDIT_ANCHOR_INTERVAL_S": "1"}).start()
    assert storescu(d.dicom_port, shared_data / "dicom/derived/nih_00000001_000_explicit-vr-le.dcm")[1] == ["Success"]
    anchors = d.state_dir / audit_anchor.FILE_NAME
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "event=audit.anchor " not in d.log_text():
        time.sleep(0.2)
    time.sleep(1.5)  # one more interval: the stored image's rows are anchored too
    anchored = max(int(json.loads(line)["seq"]) for line in anchors.read_text().splitlines())
    db = sqlite3.connect(d.state_dir / "cxrd.db")
    db.execute("DELETE FROM audit_events WHERE seq > ?", (anchored - 2,))
    db.commit()
    db.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        text = http_get(d.http_port, "/metrics")[1]
        if "cxrd_audit_chain_behind_anchor 1.0" in text:
            break
        time.sleep(0.5)
    assert "cxrd_audit_chain_behind_anchor 1.0" in text
    assert "event=audit.chain_regressed" in d.log_text()
    r = d.cli("audit", "verify")
    assert r.returncode == 1 and "removed from the end" in r.stderr
    d.stop()
