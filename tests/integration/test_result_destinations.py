"""Result destinations beside C-STORE, with real peers: Orthanc's DICOMweb plugin receives the objects
by STOW-RS, python-hl7's asyncio MLLP server receives the ORU^R01 and ACKs it (or answers AE/AR);
hostile HTTP peers (refusals, redirects, floods, silence) and the settings' validation."""
from __future__ import annotations

import asyncio
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import hl7
import hl7.mllp
import pydicom
import pytest
from sqlalchemy import select

from conftest import copy_with_new_uids, free_port, state_rows, storescu
from config.loader import ConfigError, load_settings
from cxrmodel.labels import LABELS
from daemon.dicom import finding_codes as codes
from daemon.dicom import result_objects as report
from daemon.stages.destinations import hl7_oru, stowrs
from daemon.stages.destinations.content import ReportContent
from daemon.stages.destinations.errors import RefusedError, SendError
from storage.models import AuditEvent, Result
from test_results import MARKERS, SRC, results_env, started_daemon, wait_for

NAME = "ZEBRA^QUINCY|X~Y"  # HL7 delimiters in a value must not add fields or repetitions


class Hl7Peer:
    """python-hl7's MLLP server on a free loopback port, in its own thread; keeps what it received
    and answers each message with `answer` (its MSA-3 text `reason`), or not at all with "silent"."""

    def __init__(self, answer: str = "AA", reason: str = ""):
        self.answer, self.reason = answer, reason
        self.port = free_port()
        self.received: list[str] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.server = await hl7.mllp.start_hl7_server(self._client, host="127.0.0.1", port=self.port)
        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    async def _client(self, reader, writer) -> None:  # noqa: ANN001
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(str(message))
                if self.answer == "silent":
                    await asyncio.sleep(30)
                    continue
                ack = str(message.create_ack(self.answer)).rstrip("\r")  # MSH, MSA: MSA-3 goes last
                writer.writemessage(ack + (f"|{self.reason}" if self.reason else ""))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture()
def hl7_peer():  # noqa: ANN201
    peers: list[Hl7Peer] = []

    def make(answer: str = "AA", reason: str = "") -> Hl7Peer:
        peers.append(Hl7Peer(answer, reason))
        return peers[-1]
    yield make
    for p in peers:
        p.stop()


def content(replaces: bool = False) -> ReportContent:
    findings = [report.Finding(label, 0.1 + i / 20, 0.5, 0.1 + i / 20 >= 0.5) for i, label in enumerate(LABELS)]
    identity = report.StudyIdentity(study_uid="1.2.3.4.5", patient_id=MARKERS["PatientID"], patient_name=NAME,
                                    issuer_of_patient_id="HOSP&A", accession_number=MARKERS["AccessionNumber"],
                                    study_date="20240102")
    return ReportContent(identity=identity, findings=findings, model=report.ModelIdentity(version="v7"),
                         report_uid="2.25.1234", replaces=replaces, analysed=2)


def segments(message: hl7.Message, name: str) -> list:
    return [s for s in message if str(s[0]) == name]


# -- HL7 ORU^R01 over MLLP ---------------------------------------------------------------------------
def test_the_oru_reaches_an_hl7_receiver_with_one_obx_group_per_finding_and_is_acked(hl7_peer):  # noqa: ANN001
    peer = hl7_peer("AA")
    dest = hl7_oru.Hl7Destination(host="127.0.0.1", port=peer.port, sending_facility="RAD",
                                  receiving_application="RIS", timeout_s=5)
    dest.send([], content())  # returns only on AA
    [raw] = peer.received
    msg = hl7.parse(raw)
    assert str(msg.segment("MSH")[9]) == "ORU^R01^ORU_R01" and str(msg.segment("MSH")[12]) == "2.5.1"
    assert str(msg.segment("MSH")[10]) == hl7_oru.control_id("2.25.1234")
    pid = msg.segment("PID")
    assert str(pid[3][0][0]) == MARKERS["PatientID"]
    assert len(pid) == 6 and msg.unescape(str(pid[5][0][0])) == "ZEBRA"  # family name stayed one component
    assert msg.unescape(str(pid[5][0][1])) == "QUINCY|X~Y"  # the delimiters arrived escaped, as data
    obr = msg.segment("OBR")
    assert str(obr[3]) == MARKERS["AccessionNumber"] and str(obr[25]) == "F"
    assert str(obr[4][0][0]) == "399208008"
    obx = segments(msg, "OBX")
    by_code = {}
    for s in obx:
        by_code.setdefault(str(s[3][0][0]), []).append(s)
    assert str(by_code["110180"][0][5]) == "1.2.3.4.5"
    for k, f in enumerate(codes.FINDINGS, start=1):
        [call] = by_code[f.code.value]
        assert str(call[2]) == "CWE" and str(call[4]) == str(k)
        expected = codes.PRESENT if 0.1 + (k - 1) / 20 >= 0.5 else codes.ABSENT
        assert str(call[5][0][0]) == expected.value
    probs = [s for s in by_code["122157"]]
    assert len(probs) == len(LABELS) and all(str(s[2]) == "NM" for s in probs)
    assert float(str(probs[0][5])) == pytest.approx(0.1)
    assert len(by_code["122411"]) == len(LABELS)
    comments = " ".join(msg.unescape(str(s[5])) for s in by_code["121106"])
    assert "Not for diagnostic use without physician review" in comments
    assert "highest probability" in comments  # two analysed images: how they combine is said


def test_a_replacement_is_a_corrected_result(hl7_peer):  # noqa: ANN001
    peer = hl7_peer("AA")
    hl7_oru.Hl7Destination(host="127.0.0.1", port=peer.port, timeout_s=5).send([], content(replaces=True))
    msg = hl7.parse(peer.received[0])
    assert str(msg.segment("OBR")[25]) == "C"
    assert {str(s[11]) for s in segments(msg, "OBX")} == {"C"}


def test_ae_is_retryable_with_the_receivers_reason_and_no_identifier(hl7_peer):  # noqa: ANN001
    peer = hl7_peer("AE", reason=f"patient {MARKERS['PatientID']} locked")
    with pytest.raises(SendError) as err:
        hl7_oru.Hl7Destination(host="127.0.0.1", port=peer.port, timeout_s=5).send([], content())
    assert "MSA-1 AE" in str(err.value) and "locked" in str(err.value)
    assert MARKERS["PatientID"] not in str(err.value)


def test_ar_is_a_refusal(hl7_peer):  # noqa: ANN001
    peer = hl7_peer("AR")
    with pytest.raises(RefusedError, match="MSA-1 AR"):
        hl7_oru.Hl7Destination(host="127.0.0.1", port=peer.port, timeout_s=5).send([], content())


def test_a_silent_receiver_times_out_and_a_closed_port_is_unreachable(hl7_peer):  # noqa: ANN001
    peer = hl7_peer("silent")
    t0 = time.monotonic()
    with pytest.raises(SendError, match="no ACK within"):
        hl7_oru.Hl7Destination(host="127.0.0.1", port=peer.port, timeout_s=1).send([], content())
    assert time.monotonic() - t0 < 5
    with pytest.raises(SendError, match="not reachable"):
        hl7_oru.Hl7Destination(host="127.0.0.1", port=free_port(), timeout_s=1).send([], content())


def test_a_flooding_receiver_is_cut_off():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def flood() -> None:
        conn, _ = srv.accept()
        try:
            conn.recv(65536)
            conn.sendall(b"\x0bMSH|" + b"A" * (hl7_oru.MAX_ACK * 2))
        except OSError:
            pass
        finally:
            conn.close()
    threading.Thread(target=flood, daemon=True).start()
    with pytest.raises(SendError, match="ACK larger than"):
        hl7_oru.Hl7Destination(host="127.0.0.1", port=srv.getsockname()[1], timeout_s=5).send([], content())
    srv.close()


def test_a_study_with_nothing_analysed_says_so_and_carries_no_finding(hl7_peer):  # noqa: ANN001
    peer = hl7_peer("AA")
    empty = ReportContent(identity=content().identity, findings=[], model=report.ModelIdentity(version="v7"),
                          report_uid="2.25.77", not_analysed=1)
    hl7_oru.Hl7Destination(host="127.0.0.1", port=peer.port, timeout_s=5).send([], empty)
    msg = hl7.parse(peer.received[0])
    codes_sent = {str(s[3][0][0]) for s in segments(msg, "OBX")}
    assert "122157" not in codes_sent and not codes_sent & {f.code.value for f in codes.FINDINGS}
    comments = " ".join(msg.unescape(str(s[5])) for s in segments(msg, "OBX") if str(s[3][0][0]) == "121106")
    assert "No image of this study was analysed" in comments


def test_an_ack_for_another_message_is_not_taken_as_delivery():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def wrong_ack() -> None:
        conn, _ = srv.accept()
        try:
            conn.recv(65536)
            conn.sendall(b"\x0bMSH|^~\\&|RIS||CXRD||20240101||ACK|1|P|2.5.1\rMSA|AA|SOMETHINGELSE\r\x1c\r")
        finally:
            conn.close()
    threading.Thread(target=wrong_ack, daemon=True).start()
    with pytest.raises(SendError, match="another message"):
        hl7_oru.Hl7Destination(host="127.0.0.1", port=srv.getsockname()[1], timeout_s=5).send([], content())
    srv.close()


def test_credentials_come_from_their_file_and_a_missing_file_is_one_line(tmp_path):  # noqa: ANN001
    from daemon.errors import DaemonError
    from daemon.stages.destinations.configured import destinations_from_settings
    token = tmp_path / "stow.cred"
    token.write_text("pacs:pa55word\n")
    env = {"CXRD_STORAGE__STATE_DIR": str(tmp_path), "CXRD_RESULTS__STOW__ENABLED": "true",
           "CXRD_RESULTS__STOW__URL": "http://127.0.0.1:1/dw", "CXRD_RESULTS__STOW__AUTH": "basic",
           "CXRD_RESULTS__STOW__CREDENTIALS_FILE": str(token)}
    [dest] = destinations_from_settings(load_settings(None, env).results)
    assert dest.authorization == "Basic cGFjczpwYTU1d29yZA=="
    assert "cGFjczpwYTU1d29yZA" not in dest.describe() + repr(dest)
    token.unlink()
    with pytest.raises(DaemonError, match="results.stow.credentials_file: cannot read"):
        destinations_from_settings(load_settings(None, env).results)


def test_escape_leaves_no_delimiter_or_segment_break():
    assert hl7_oru.escape("a|b^c&d~e\\f\rg\nh\x00") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X0D\\g\\X0A\\h"


# -- STOW-RS ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_stow_rs_stores_objects_in_orthanc_dicomweb(tmp_path, shared_data):  # noqa: ANN001
    from conftest import Orthanc
    o = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    try:
        [src] = copy_with_new_uids(shared_data / SRC, tmp_path / "in", 1, markers=MARKERS)
        ds = pydicom.dcmread(src)
        stowrs.StowDestination(url=f"{o.url}/dicom-web/", timeout_s=20).send([ds])
        [inst] = o.study_instances(ds.StudyInstanceUID)
        assert inst["SOPInstanceUID"] == ds.SOPInstanceUID
        stowrs.StowDestination(url=f"{o.url}/dicom-web", timeout_s=20).send([ds])  # again: idempotent
        assert len(o.study_instances(ds.StudyInstanceUID)) == 1
        with pytest.raises(RefusedError, match="HTTP 404"):  # not a DICOMweb root
            stowrs.StowDestination(url=f"{o.url}/no-such-root", timeout_s=20).send([ds])
    finally:
        o.stop()
    with pytest.raises(SendError, match="not reachable"):
        stowrs.StowDestination(url=f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=2).send([ds])


class _Hostile(http.server.BaseHTTPRequestHandler):
    mode = "409"

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        _Hostile.seen = dict(self.headers)
        if self.mode == "409":
            body = json.dumps({stowrs.FAILED_SOP_SEQUENCE: {"vr": "SQ", "Value": [
                {stowrs.FAILURE_REASON: {"vr": "US", "Value": [0xA700]}}]}}).encode()
            self._answer(409, body)
        elif self.mode == "503":
            self._answer(503, b"busy")
        elif self.mode == "redirect":
            self.send_response(307)
            self.send_header("Location", "http://203.0.113.1/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.mode == "flood":
            self._answer(200, b"[" * (stowrs.MAX_RESPONSE * 2))
        elif self.mode == "unconfirmed":
            self._answer(200, json.dumps({stowrs.REFERENCED_SOP_SEQUENCE: {"vr": "SQ", "Value": []}}).encode())
        elif self.mode.startswith("trickle"):  # every byte well within any per-operation timeout
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\n"
            self.wfile.write(head if self.mode == "trickle-body" else b"HTTP/1.1 200 ")
            self.wfile.flush()
            if self.mode == "trickle-body":
                self.wfile.write(b"Content-Length: 100000\r\n\r\n")
            try:
                for _ in range(60):  # 30 s at most, then the answer just stops
                    self.wfile.write(b"x" if self.mode == "trickle-headers" else b"[")
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:  # cut by the client
                pass

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.mark.parametrize("mode, error, text", [
    ("409", RefusedError, "refused 1 of 1 object(s) (failure reason 0xA700)"),
    ("503", SendError, "HTTP 503"),
    ("redirect", RefusedError, "redirect"),
    ("unconfirmed", SendError, "did not confirm 1 of 1"),
    ("flood", SendError, "larger than"),
    ("trickle-headers", SendError, "no complete answer within 2 s"),
    ("trickle-body", SendError, "no complete answer within 2 s"),
])
def test_stow_rs_outcomes_from_a_hostile_peer(mode, error, text, tmp_path):  # noqa: ANN001
    _Hostile.mode = mode
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    ds = pydicom.Dataset()
    ds.SOPInstanceUID, ds.SOPClassUID = "2.25.99", "1.2.840.10008.5.1.4.1.1.88.34"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    secret = tmp_path / "token"
    secret.write_text("s3cret-token\n")
    try:
        dest = stowrs.StowDestination(url=f"http://127.0.0.1:{srv.server_address[1]}/dw",
                                      authorization=stowrs.authorization("bearer", "s3cret-token"), timeout_s=2)
        started = time.monotonic()
        with pytest.raises(error) as err:
            dest.send([ds])
        assert time.monotonic() - started < 10  # the whole request is bounded, not each byte's wait
        assert text in str(err.value) and "s3cret" not in str(err.value)
        assert _Hostile.seen["Authorization"] == "Bearer s3cret-token"
        assert _Hostile.seen["Content-Type"].startswith('multipart/related; type="application/dicom"; boundary=')
    finally:
        srv.shutdown()


# -- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("env, message", [
    ({"CXRD_RESULTS__STOW__ENABLED": "true"}, "'results.stow.url' must be an http"),
    ({"CXRD_RESULTS__STOW__ENABLED": "true", "CXRD_RESULTS__STOW__URL": "https://u:p@pacs/dw"}, "must not carry"),
    ({"CXRD_RESULTS__STOW__ENABLED": "true", "CXRD_RESULTS__STOW__URL": "https://pacs/dw",
      "CXRD_RESULTS__STOW__AUTH": "bearer"}, "'results.stow.credentials_file' is required"),
    ({"CXRD_RESULTS__HL7__ENABLED": "true"}, "'results.hl7.host' is required"),
    ({"CXRD_RESULTS__HL7__ENABLED": "true", "CXRD_RESULTS__HL7__HOST": "ris",
      "CXRD_RESULTS__HL7__SENDING_FACILITY": "A|B"}, "without HL7 delimiters"),
])
def test_incomplete_destination_settings_are_refused_at_load(env, message, tmp_path):  # noqa: ANN001
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("|", r"\|")):
        load_settings(None, {"CXRD_STORAGE__STATE_DIR": str(tmp_path), **env})


def test_a_relative_credentials_file_is_taken_from_the_config_files_folder(tmp_path, monkeypatch):  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "cxrd.toml").write_text('[results.stow]\nenabled = true\nurl = "https://pacs/dw"\n'
                                               'auth = "bearer"\ncredentials_file = "stow.token"\n')
    r = load_settings(tmp_path / "etc" / "cxrd.toml", {"CXRD_STORAGE__STATE_DIR": str(tmp_path)}).results
    assert r.stow.credentials_file == str(tmp_path / "etc" / "stow.token")


def test_destinations_are_off_by_default(tmp_path):  # noqa: ANN001
    r = load_settings(None, {"CXRD_STORAGE__STATE_DIR": str(tmp_path)}).results
    assert not r.stow.enabled and not r.hl7.enabled


# -- the daemon: same retry, park and audit rules as C-STORE ----------------------------------------
@pytest.mark.slow
def test_daemon_sends_by_cstore_stowrs_and_hl7(orthanc, daemon_factory, shared_data, tmp_path,  # noqa: ANN001
                                               hl7_peer):
    from conftest import Orthanc
    web = Orthanc(tmp_path / "orthanc-web", dicomweb=True).start()  # reached by STOW-RS only
    try:
        peer = hl7_peer("AA")
        d = started_daemon(daemon_factory, results_env(
            orthanc, CXRD_RESULTS__STOW__ENABLED="true", CXRD_RESULTS__STOW__URL=f"{web.url}/dicom-web",
            CXRD_RESULTS__HL7__ENABLED="true", CXRD_RESULTS__HL7__HOST="127.0.0.1",
            CXRD_RESULTS__HL7__PORT=str(peer.port)))
        [src] = copy_with_new_uids(shared_data / SRC, tmp_path / "in", 1, markers=MARKERS)
        original = pydicom.dcmread(src, stop_before_pixels=True)
        assert storescu(d.dicom_port, src)[1] == ["Success"]
        wait_for(lambda: state_rows(d.state_dir, select(Result.state))[0][0] == "sent"
                 if state_rows(d.state_dir, select(Result.state)) else False)
        [by_cstore] = orthanc.study_instances(original.StudyInstanceUID)
        [by_stow] = web.study_instances(original.StudyInstanceUID)
        assert by_stow["Modality"] == "SR" and by_stow["SOPInstanceUID"] == by_cstore["SOPInstanceUID"]
        assert by_stow["PatientID"] == MARKERS["PatientID"]
        [raw] = peer.received
        msg = hl7.parse(raw)
        assert str(msg.segment("PID")[3]).split("^")[0] == MARKERS["PatientID"]
        assert str(msg.segment("PID")[5]).split("^")[:2] == MARKERS["PatientName"].split("^")
        assert str(msg.segment("OBR")[3]) == MARKERS["AccessionNumber"]
        uid_obx = [s for s in segments(msg, "OBX") if str(s[3][0][0]) == "110180"]
        assert str(uid_obx[0][5]) == original.StudyInstanceUID
        assert len([s for s in segments(msg, "OBX") if str(s[3][0][0]) == "122157"]) == len(LABELS)
        [sent] = [json.loads(x) for (x,) in state_rows(
            d.state_dir, select(AuditEvent.details).where(AuditEvent.event_type == "result.sent"))]
        assert "STOW-RS" in sent["destination"] and "HL7 MLLP" in sent["destination"]
        text = d.log_text()
        for secret in (*MARKERS.values(), original.StudyInstanceUID):
            assert secret not in text
    finally:
        web.stop()


@pytest.mark.slow
def test_an_hl7_receiver_answering_ae_parks_the_result_after_max_attempts(  # noqa: ANN001
        orthanc, daemon_factory, shared_data, tmp_path, hl7_peer):
    peer = hl7_peer("AE", reason=f"cannot file {MARKERS['PatientID']}")
    d = started_daemon(daemon_factory, results_env(
        orthanc, CXRD_RESULTS__HL7__ENABLED="true", CXRD_RESULTS__HL7__HOST="127.0.0.1",
        CXRD_RESULTS__HL7__PORT=str(peer.port), CXRD_RESULTS__RETRY_BASE_S="0.2", CXRD_RESULTS__MAX_ATTEMPTS="2"))
    [src] = copy_with_new_uids(shared_data / SRC, tmp_path / "in", 1, markers=MARKERS)
    original = pydicom.dcmread(src, stop_before_pixels=True)
    assert storescu(d.dicom_port, src)[1] == ["Success"]

    def parked():  # noqa: ANN202
        rows = state_rows(d.state_dir, select(Result.state, Result.attempts, Result.last_error))
        return rows[0] if rows and rows[0].state == "failed" else None
    row = wait_for(parked)
    assert row.attempts == 2 and "MSA-1 AE" in row.last_error and "cannot file" in row.last_error
    assert len(peer.received) == 2
    failed = [json.loads(x) for (x,) in state_rows(
        d.state_dir, select(AuditEvent.details).where(AuditEvent.event_type == "result.failed"))]
    assert [f["final"] for f in failed] == [False, True]
    text = d.log_text() + json.dumps(failed) + row.last_error
    for secret in (*MARKERS.values(), original.StudyInstanceUID):
        assert secret not in text


@pytest.mark.slow
def test_a_stow_rs_refusal_parks_the_result_at_once(orthanc, daemon_factory, shared_data, tmp_path):  # noqa: ANN001
    d = started_daemon(daemon_factory, results_env(  # Orthanc without the plugin: 404 on /dicom-web/studies
        orthanc, CXRD_RESULTS__STOW__ENABLED="true", CXRD_RESULTS__STOW__URL=f"{orthanc.url}/dicom-web",
        CXRD_RESULTS__RETRY_BASE_S="0.2", CXRD_RESULTS__MAX_ATTEMPTS="5"))
    [src] = copy_with_new_uids(shared_data / SRC, tmp_path / "in", 1, markers=MARKERS)
    assert storescu(d.dicom_port, src)[1] == ["Success"]

    def parked():  # noqa: ANN202
        rows = state_rows(d.state_dir, select(Result.state, Result.attempts, Result.last_error))
        return rows[0] if rows and rows[0].state == "failed" else None
    row = wait_for(parked)
    assert row.attempts == 1 and "HTTP 404" in row.last_error  # a refusal is not retried
    [failed] = [json.loads(x) for (x,) in state_rows(
        d.state_dir, select(AuditEvent.details).where(AuditEvent.event_type == "result.failed"))]
    assert failed["final"] is True and "STOW-RS" in failed["destination"]
    status = json.loads(d.cli("status", "--format", "json", check=True).stdout)
    assert status["results"] == {"failed": 1}
