"""`cxrd serve` with real dcmtk peers: starts on defaults, answers C-ECHO, stops cleanly."""
from __future__ import annotations

import signal
import subprocess

from conftest import dcmtk


def test_serve_answers_echoscu_and_stops_on_sigterm(daemon_factory):
    d = daemon_factory().start()
    ok = dcmtk("echoscu", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port))
    assert ok.returncode == 0, ok.stderr
    wrong = dcmtk("echoscu", "-aec", "NOT_CXRD", "127.0.0.1", str(d.dicom_port))
    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stderr
    assert d.stop(signal.SIGTERM, timeout=30) == 0
    log = d.log_text()
    assert "event=service.started" in log and f"state_dir={d.state_dir}" in log
    assert "event=service.stopped" in log


def test_a_serving_daemon_cannot_dump_core(daemon_factory):
    """It holds the master key and decoded images: no core file, whoever started it."""
    d = daemon_factory().start()
    limits = open(f"/proc/{d.proc.pid}/limits").read()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core
    assert d.stop(signal.SIGTERM, timeout=30) == 0


def test_serve_stops_cleanly_on_sigint(daemon_factory):
    d = daemon_factory().start()
    assert d.stop(signal.SIGINT, timeout=30) == 0


def test_port_in_use_is_a_clear_error(daemon_factory, tmp_path):
    first = daemon_factory().start()
    second = daemon_factory()
    second.env["CXRD_DICOM__PORT"] = str(first.dicom_port)
    r = second.cli("serve", timeout=60)
    assert r.returncode == 1
    assert f"cannot listen for DICOM on 127.0.0.1:{first.dicom_port}" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_calling_ae_allow_list_refuses_others(daemon_factory):
    d = daemon_factory({"CXRD_DICOM__ALLOWED_CALLING_AETS": '["PACS1"]'}).start()
    assert dcmtk("echoscu", "-aet", "PACS1", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port)).returncode == 0
    refused = dcmtk("echoscu", "-aet", "INTRUDER", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port))
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr


def _echo_from(source: str, port: int) -> bool:
    """C-ECHO from a chosen loopback source address (dcmtk's echoscu cannot pick one)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRD", bind_address=(source, 0))
    try:
        return assoc.is_established and assoc.send_c_echo().Status == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()


def test_embedded_default_admits_only_loopback_sources(daemon_factory):
    d = daemon_factory().start()
    assert _echo_from("127.0.0.1", d.dicom_port)
    assert not _echo_from("127.0.0.2", d.dicom_port)  # another host as far as the gate is concerned
    assert d.stop() == 0
    assert "host not allowed" in d.cli("audit", "query", "--format", "json").stdout


def test_an_empty_host_allow_list_is_refused_unless_any_host_is_allowed_explicitly(daemon_factory):
    closed = daemon_factory({"CXRD_DICOM__ALLOWED_HOSTS": "[]"})
    r = closed.cli("serve", timeout=60)
    assert r.returncode == 1
    assert "dicom.allowed_hosts is empty" in r.stderr and "allow_any_host" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    opened = daemon_factory({"CXRD_DICOM__ALLOWED_HOSTS": "[]", "CXRD_DICOM__ALLOW_ANY_HOST": "true"}).start()
    assert _echo_from("127.0.0.2", opened.dicom_port)
    assert opened.stop() == 0
    assert "event=dicom.any_host_allowed" in opened.log_text()


def test_a_refused_host_in_a_loop_costs_one_audit_row_not_one_per_connection(daemon_factory):
    """A host not on the allow-list that connects over and over neither stalls the gate for the PACS
    nor writes an audit row per attempt: refusals are counted and audited per source and interval."""
    import json
    import socket
    import time
    d = daemon_factory().start()
    attempts = 300
    for i in range(attempts):
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", d.dicom_port))
        if i == attempts // 2:
            assert _echo_from("127.0.0.1", d.dicom_port)  # the PACS still gets in, mid-flood
    deadline = time.monotonic() + 20  # the kernel queued the connections; the gate refuses them in turn
    while True:
        rows = json.loads(d.cli("audit", "query", "--event", "association.rejected",
                                "--format", "json").stdout)["events"]
        if sum(r["details"]["count"] for r in rows) >= attempts or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert d.stop() == 0
    assert 1 <= len(rows) <= 10, len(rows)
    assert all(r["host"] == "127.0.0.2" for r in rows)
    assert sum(r["details"]["count"] for r in rows) == attempts


def test_the_dicom_port_listens_with_a_deep_backlog(daemon_factory):
    """A short listen backlog lets any host that connects in a loop make the kernel drop the PACS's
    connection attempts; `ss` reports a listening socket's backlog as its Send-Q."""
    import shutil
    d = daemon_factory().start()
    ss = shutil.which("ss")
    assert ss, "ss (Debian iproute2) not found"
    out = subprocess.run([ss, "-ltnH", f"sport = :{d.dicom_port}"], capture_output=True, text=True).stdout.split()
    assert int(out[2]) >= 128, out
    assert d.stop() == 0
