"""Radiology reports from a real HL7 client (python-hl7's `mllp_send`) to a running `cxrd serve`, and
real images by C-STORE (dcmtk storescu): reports before and after their images, duplicates,
malformed and refused messages, an oversize frame, a disallowed host, kill -9 right after an AA,
and a marker planted in the report text found nowhere under the state directory or in the log."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

from sqlalchemy import create_engine, text

from conftest import copy_with_new_uids, free_port, storescu
from storage.deid import pseudonymize_uid
from storage.keys import load_keys
from storage.reports import accession_key

SRC = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"
MLLP_SEND = Path(shutil.which("mllp_send") or "/work/main/.venv/bin/mllp_send")
MARKER = "ZQXMARKERREPORT"        # planted in report text: must be found nowhere
NAME_MARKER = "ZQXMARKERNAME"     # planted in PID-5 (patient name): must be found nowhere either


def iu_reports(shared_data: Path, n: int) -> list[dict[str, str]]:
    """The first n IU reports (by number) with FINDINGS or IMPRESSION and a labeller positive."""
    from cxrmodel.report_labeller import label_report
    out = []
    with tarfile.open(shared_data / "reports" / "iu-xray-reports.tgz") as tar:
        members = sorted((m for m in tar.getmembers() if m.name.endswith(".xml")),
                         key=lambda m: int(re.sub(r"\D", "", Path(m.name).stem) or 0))
        for m in members:
            root = ET.parse(tar.extractfile(m)).getroot()
            parts = {a.get("Label"): (a.text or "").strip() for a in root.iter("AbstractText")}
            findings, impression = parts.get("FINDINGS", ""), parts.get("IMPRESSION", "")
            if not findings or not impression:
                continue
            labels = label_report(f"FINDINGS: {findings}\nIMPRESSION: {impression}")
            if any(f.status == "positive" for f in labels.values()):
                out.append({"findings": findings, "impression": impression,
                            "positive": sorted(k for k, f in labels.items() if f.status == "positive")})
            if len(out) == n:
                return out
    raise AssertionError("not enough IU reports")


def oru(report: dict[str, str], control_id: str, *, study_uid: str = "", accession: str = "",
        status: str = "F", kind: str = "ORU^R01") -> bytes:
    """An ORU^R01 as a RIS sends it: accession in OBR-18 (and OBR-3), Study Instance UID in ZDS-1."""
    segs = [f"MSH|^~\\&|RIS|GENHOSP|CXRD|CXRD|20260101120000||{kind}|{control_id}|P|2.5.1",
            f"PID|1||MRN{control_id}^^^GENHOSP||{NAME_MARKER}^JANE||19600101|F",
            f"OBR|1||{accession}|71020^XR CHEST 2 VIEWS^C4|||20260101110000|||||||||||{accession}|||||||{status}"]
    if study_uid:
        segs.append(f"ZDS|{study_uid}^RIS^Application^DICOM")
    segs.append(f"OBX|1|TX|18782-3^Radiology Study observation^LN||{report['findings']} {MARKER}.||||||{status}")
    segs.append(f"OBX|2|TX|19005-8^Impression^LN||{report['impression']}||||||{status}")
    return ("\r".join(segs) + "\r").encode("latin-1")


def mllp_send(port: int, message: bytes, tmp: Path) -> str:
    """Send one framed message with python-hl7's mllp_send; the ACK code it printed ('' if none)."""
    f = tmp / f"msg-{time.monotonic_ns()}.hl7"
    f.write_bytes(b"\x0b" + message + b"\x1c\x0d")
    r = subprocess.run([str(MLLP_SEND), "-p", str(port), "-f", str(f), "127.0.0.1"], capture_output=True,
                       timeout=60)
    f.unlink()
    m = re.search(rb"MSA\|(A[AER])\|", r.stdout)
    return m.group(1).decode() if m else ""


def db(d) -> tuple:  # noqa: ANN001
    keys = load_keys(d.state_dir / "keys" / "master.key", d.state_dir / "keys" / "keyring.json")
    return create_engine(f"sqlite:///{d.state_dir / 'cxrd.db'}"), keys


def reports(engine) -> list[dict]:  # noqa: ANN001
    with engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(text("SELECT * FROM reports ORDER BY id"))]


def report_labels(engine, study_pseudonym: str) -> list[dict]:  # noqa: ANN001
    with engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(text(
            "SELECT l.*, i.study_uid FROM labels l JOIN instances i ON i.id = l.instance_id "
            "WHERE i.study_uid = :s"), {"s": study_pseudonym})]


def wait_for(check, timeout: float = 30.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def hl7_env(port: int, **extra: str) -> dict[str, str]:
    return {"CXRD_HL7__LISTEN__ENABLED": "true", "CXRD_HL7__LISTEN__PORT": str(port),
            "CXRD_HL7__LISTEN__BIND": "127.0.0.1", "CXRD_HL7__LISTEN__MAX_MESSAGE_BYTES": "65536",
            "CXRD_MODEL__WORKERS": "0", **extra}


def test_reports_before_and_after_images_over_mllp(daemon_factory, shared_data, tmp_path):
    sample = iu_reports(shared_data, 4)
    port = free_port()
    d = daemon_factory(hl7_env(port)).start()
    engine, keys = db(d)

    # A: Study Instance UID only, before its images. B: accession only, before its images.
    study_a, acc_b, study_c = "1.2.826.0.1.3680043.8.498.1001", "ACCB0001", "1.2.826.0.1.3680043.8.498.1003"
    assert mllp_send(port, oru(sample[0], "CTRL-A", study_uid=study_a), tmp_path) == "AA"
    assert mllp_send(port, oru(sample[1], "CTRL-B", accession=acc_b), tmp_path) == "AA"
    assert mllp_send(port, oru(sample[0], "CTRL-A", study_uid=study_a), tmp_path) == "AA"  # duplicate
    rows = reports(engine)
    assert [r["state"] for r in rows] == ["waiting", "waiting"]  # the duplicate was not recorded again
    assert rows[0]["study_uid"] == pseudonymize_uid(keys.uid_key, study_a)
    assert rows[1]["accession_hash"] == accession_key(keys.uid_key, acc_b) and rows[1]["study_uid"] == ""
    assert all(r["text_object"] for r in rows)  # hl7.report_text = "encrypted" (the default)

    # Malformed and refused messages: AE / AR, nothing stored.
    assert mllp_send(port, b"MSH|^~\\&|RIS|GENHOSP|CXRD|CXRD|20260101||ORU^R01||P|2.5.1\rOBR|1", tmp_path) == "AE"
    assert mllp_send(port, b"MSH|^~\\&|RIS|GENHOSP|CXRD|CXRD|20260101||ORU^R01|X1|P|2.5.1\rPID|1\r", tmp_path) == "AE"
    assert mllp_send(port, oru(sample[2], "CTRL-ORM", study_uid=study_c, kind="ORM^O01"), tmp_path) == "AR"
    assert mllp_send(port, oru(sample[2], "CTRL-BAD", study_uid="1.2.x"), tmp_path) == "AE"
    assert len(reports(engine)) == 2

    # An oversize frame (hl7.listen.max_message_bytes = 64 KiB): AR, and the daemon does not grow by
    # the frame's size. (4 MiB: mllp_send's reader joins its input quadratically.)
    before = rss_kib(d.proc.pid)
    big = oru(sample[2], "CTRL-BIG", study_uid=study_c).replace(MARKER.encode(), b"x" * (4 << 20))
    assert mllp_send(port, big, tmp_path) == "AR"
    assert rss_kib(d.proc.pid) - before < 2 * 1024, "oversize frame was buffered"
    assert len(reports(engine)) == 2

    # The images arrive: A by its Study Instance UID, B by its Accession Number.
    files_a = copy_with_new_uids(shared_data / SRC, tmp_path / "a", 2, markers={"StudyInstanceUID": study_a})
    files_b = copy_with_new_uids(shared_data / SRC, tmp_path / "b", 1, markers={"AccessionNumber": acc_b})
    assert storescu(d.dicom_port, *files_a, *files_b)[1] == ["Success"] * 3
    pa = pseudonymize_uid(keys.uid_key, study_a)
    labels_a = wait_for(lambda: report_labels(engine, pa) if len(report_labels(engine, pa)) == 2 else None)
    assert labels_a and all(lab["source"] == "report" for lab in labels_a)
    states = json.loads(labels_a[0]["states"])
    assert len(states) == 14 and {f for f, v in states.items() if v == "positive"} == set(sample[0]["positive"])
    rows = wait_for(lambda: r if (r := reports(engine))[1]["state"] == "labelled" else None)
    assert rows and rows[0]["state"] == "labelled" and rows[0]["labelled"] == 2
    pb = rows[1]["matched_study_uid"]
    assert pb and pb != pa and len(report_labels(engine, pb)) == 1

    # C: images first, then the report.
    files_c = copy_with_new_uids(shared_data / SRC, tmp_path / "c", 1, markers={"StudyInstanceUID": study_c,
                                                                                 "AccessionNumber": "ACCC0003"})
    assert storescu(d.dicom_port, *files_c)[1] == ["Success"]
    assert mllp_send(port, oru(sample[2], "CTRL-C", study_uid=study_c, accession="ACCC0003"), tmp_path) == "AA"
    pc = pseudonymize_uid(keys.uid_key, study_c)
    assert wait_for(lambda: report_labels(engine, pc))

    # D: recorded, acknowledged, then kill -9 at once: nothing is lost.
    study_d = "1.2.826.0.1.3680043.8.498.1004"
    assert mllp_send(port, oru(sample[3], "CTRL-D", study_uid=study_d), tmp_path) == "AA"
    d.proc.send_signal(signal.SIGKILL)
    d.stop()
    # Restart with an HL7 allow-list that does not hold loopback: the connection is refused.
    d.env["CXRD_HL7__LISTEN__ALLOWED_HOSTS"] = '["10.9.9.9"]'
    d.start()
    assert [r["state"] for r in reports(engine)][3] == "waiting"
    assert mllp_send(port, oru(sample[3], "CTRL-E", study_uid=study_d), tmp_path) == ""
    assert len(reports(engine)) == 4
    files_d = copy_with_new_uids(shared_data / SRC, tmp_path / "d", 1, markers={"StudyInstanceUID": study_d})
    assert storescu(d.dicom_port, *files_d)[1] == ["Success"]
    pd = pseudonymize_uid(keys.uid_key, study_d)
    assert wait_for(lambda: report_labels(engine, pd))

    r = d.cli("labels", "list", "--format", "json")
    counts = json.loads(r.stdout)
    assert counts["labels"]["report"] == 5 and counts["reports"]["labelled"] == 4, r.stdout + r.stderr

    def audited() -> list[str]:
        with engine.connect() as c:
            return [e for (e,) in c.execute(text("SELECT event_type FROM audit_events"))]
    # refused connections and messages are counted and written once a second (daemon.ops.refusal_audit)
    events = wait_for(lambda: e if "hl7.connection_refused" in (e := audited()) else None) or audited()
    assert events.count("report.received") == 4
    with engine.connect() as c:
        refused = [json.loads(d) for (d,) in c.execute(text(
            "SELECT details FROM audit_events WHERE event_type = 'report.refused'"))]
    assert sum(r["count"] for r in refused) == 5  # the four malformed or refused messages and the oversize one
    assert {r["ack"] for r in refused} == {"AE", "AR"} and all(r["sending_applications"] == ["RIS"] for r in refused)
    assert "report.matched" in events and "report.labelled" in events and "hl7.connection_refused" in events
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{d.http_port}/metrics").read().decode()
    assert 'cxrd_hl7_messages_total{outcome="connection_refused"} 1.0' in metrics  # since the restart
    d.stop()

    # The marker planted in every report text, and the patient name, are nowhere in clear.
    for path in [*d.state_dir.rglob("*"), d.log_path]:
        if path.is_file():
            data = path.read_bytes()
            assert MARKER.encode() not in data and NAME_MARKER.encode() not in data, f"marker in {path}"
    with engine.connect() as c:
        for (table,) in c.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).all():
            for row in c.execute(text(f'SELECT * FROM "{table}"')):
                assert MARKER not in repr(tuple(row)) and NAME_MARKER not in repr(tuple(row)), table
