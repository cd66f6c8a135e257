"""The Storage SCP with real dcmtk peers: durable before acknowledged, duplicates, non-chest images,
resource exhaustion, malformed traffic, and kill -9 in the middle of a push."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pydicom
import pytest
from sqlalchemy import create_engine, func, select, text

from conftest import copy_with_new_uids, dcmtk, storescu
from storage.deid import pseudonymize_uid
from storage.keys import load_keys
from storage.models import AuditEvent, Instance, Job
from storage.vault import Vault

CHEST = "dicom/chest"
DERIVED = "dicom/derived"

# What the running pynetdicom reports in the "pynetdicom-upgraded" receive path: not the version the
# adjustments were written for, as after an upgrade. Loaded by Python at start (sitecustomize).
UPGRADED_PYNETDICOM = "3.1.0"


@pytest.fixture(params=["adjusted", "pynetdicom-upgraded", "switched-off"])
def daemon_factory(request, daemon_factory, tmp_path):  # noqa: ANN001, ANN201
    """Every test in this module runs against three daemons: with cxrd's adjustments to pynetdicom;
    with the version guard failing (the running pynetdicom reports another version, so the daemon
    must serve with stock pynetdicom); and with them switched off by the setting. Same assertions."""
    env: dict[str, str] = {}
    if request.param == "pynetdicom-upgraded":
        site = tmp_path / "pynetdicom-upgraded"
        site.mkdir()
        (site / "sitecustomize.py").write_text(
            f"import pynetdicom\npynetdicom.__version__ = {UPGRADED_PYNETDICOM!r}\n")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    elif request.param == "switched-off":
        env["CXRD_DICOM__RECEIVE_ADJUSTMENTS"] = "false"

    def make(extra: dict[str, str] | None = None, state_dir=None):  # noqa: ANN001, ANN202
        return daemon_factory({**env, **(extra or {})}, state_dir)
    make.receive_path = request.param
    return make


def state(d) -> tuple:  # noqa: ANN001
    """(engine, keys, vault) of a daemon's state directory, opened the way an operator would."""
    keys = load_keys(d.state_dir / "keys" / "master.key", d.state_dir / "keys" / "keyring.json")
    engine = create_engine(f"sqlite:///{d.state_dir / 'cxrd.db'}")
    return engine, keys, Vault(d.state_dir / "vault", keys.keyring)


def stored_objects(d) -> list:  # noqa: ANN001
    """Vault files holding an object (empty files are reservations made ahead of time)."""
    return [p for p in (d.state_dir / "vault").rglob("*.cxv") if p.stat().st_size > 0]


def count(engine, model, *where) -> int:  # noqa: ANN001
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(model).where(*where)).scalar()


def test_every_chest_file_in_every_transfer_syntax_is_stored_and_decrypts_to_the_same_pixels(
        daemon_factory, shared_data):
    d = daemon_factory().start()
    files = sorted((shared_data / CHEST).glob("*.dcm")) + sorted((shared_data / DERIVED).glob("*.dcm"))
    for f in files:
        r, statuses = storescu(d.dicom_port, f)
        assert statuses == ["Success"], (f.name, r.stdout[-500:], r.stderr[-500:])
    engine, keys, vault = state(d)
    with engine.connect() as c:
        rows = c.execute(select(Instance.sop_instance_uid, Instance.vault_object, Instance.state)).all()
        assert count(engine, Job, Job.state == "queued") == len(files)
    assert len(rows) == len(files)
    for f in files:
        original = pydicom.dcmread(f, force=True)
        if "TransferSyntaxUID" not in original.file_meta:  # the ACR-NEMA style file has no meta
            original.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        pseudo = pseudonymize_uid(keys.uid_key, str(original.SOPInstanceUID))
        row = next(r for r in rows if r.sop_instance_uid == pseudo)
        assert row.state == "received"
        stored = pydicom.dcmread(io.BytesIO(vault.get(row.vault_object)))
        # identity is claimed removed only when the source says no annotation is burned in
        claim = "YES" if original.get("BurnedInAnnotation") == "NO" else "NO"
        assert stored.SOPInstanceUID == pseudo and stored.PatientIdentityRemoved == claim
        assert np.array_equal(stored.pixel_array, original.pixel_array), f.name
    with engine.connect() as c:
        stored_events = c.execute(select(func.count()).select_from(AuditEvent)
                                  .where(AuditEvent.event_type == "instance.stored")).scalar()
    assert stored_events == len(files)
    assert d.stop() == 0


def test_non_chest_images_are_acknowledged_not_stored_and_audited(daemon_factory, shared_data):
    d = daemon_factory().start()
    for f in sorted((shared_data / "dicom/nonchest").glob("*.dcm")):
        _, statuses = storescu(d.dicom_port, f)
        assert statuses == ["Success"], f.name
    engine, _, _ = state(d)
    assert count(engine, Instance) == 0
    assert count(engine, AuditEvent, AuditEvent.event_type == "instance.ignored") == 2
    assert stored_objects(d) == []


def test_non_chest_can_be_configured_to_be_rejected(daemon_factory, shared_data):
    d = daemon_factory({"CXRD_DICOM__NON_CHEST": "reject"}).start()
    dental = shared_data / "dicom/nonchest/fo-dicom_CR-ModalitySequenceLUT_dental.dcm"
    r, statuses = storescu(d.dicom_port, dental)
    assert statuses and statuses[0] != "Success"
    assert statuses == ["Error: CannotUnderstand"]  # 0xC230: not a chest radiograph
    engine, _, _ = state(d)
    assert count(engine, AuditEvent, AuditEvent.event_type == "instance.rejected") == 1


def test_sequential_and_concurrent_duplicates_make_one_object_and_one_job(daemon_factory, shared_data, tmp_path):
    d = daemon_factory().start()
    src = shared_data / DERIVED / "nih_00000001_000_explicit-vr-le.dcm"
    (f,) = copy_with_new_uids(src, tmp_path / "dup", 1)
    assert storescu(d.dicom_port, f)[1] == ["Success"]
    assert storescu(d.dicom_port, f)[1] == ["Success"]
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(storescu(d.dicom_port, f, f)[1])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s == ["Success", "Success"] for s in results)
    engine, _, _ = state(d)
    assert count(engine, Instance) == 1
    assert count(engine, Job) == 1
    assert len(stored_objects(d)) == 1


def test_disk_below_the_floor_answers_out_of_resources_and_stores_nothing(daemon_factory, shared_data):
    d = daemon_factory({"CXRD_STORAGE__MIN_FREE_MB": str(1 << 40)}).start()
    r, statuses = storescu(d.dicom_port, shared_data / DERIVED / "nih_00000001_000_explicit-vr-le.dcm")
    assert statuses == ["Refused: OutOfResources"], r.stdout[-400:]
    assert dcmtk("echoscu", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port)).returncode == 0
    engine, _, _ = state(d)
    assert count(engine, Instance) == 0


@pytest.mark.postgres
def test_database_unreachable_answers_out_of_resources_then_recovers(daemon_factory, shared_data, tmp_path,
                                                                     fresh_pg_database):
    d = daemon_factory({"CXRD_STORAGE__DATABASE_URL": fresh_pg_database}).start()
    dbname = fresh_pg_database.rsplit("/", 1)[1]
    admin = create_engine(fresh_pg_database.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    first, second = copy_with_new_uids(shared_data / DERIVED / "nih_00000001_000_explicit-vr-le.dcm",
                                       tmp_path / "pg", 2)
    with admin.connect() as c:
        c.execute(text(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false'))
        c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": dbname})
    try:
        _, statuses = storescu(d.dicom_port, first)
        assert statuses == ["Refused: OutOfResources"]
    finally:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true'))
    assert stored_objects(d) == [], "nothing half-written"
    assert storescu(d.dicom_port, second)[1] == ["Success"]
    assert d.stop() == 0
    admin.dispose()


def test_garbage_bytes_and_idle_connections_do_not_affect_other_associations(daemon_factory, shared_data):
    d = daemon_factory({"CXRD_DICOM__ACSE_TIMEOUT": "2", "CXRD_DICOM__NETWORK_TIMEOUT": "2"}).start()
    idle = socket.create_connection(("127.0.0.1", d.dicom_port))
    garbage = socket.create_connection(("127.0.0.1", d.dicom_port))
    garbage.sendall(b"\x01\x00\x00\x00\xff\xff\xffGARBAGE" * 50)
    truncated = socket.create_connection(("127.0.0.1", d.dicom_port))
    truncated.sendall(b"\x01\x00\x00\x00\x00\x44\x00\x01")  # A-ASSOCIATE-RQ header, body never sent
    assert dcmtk("echoscu", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port)).returncode == 0
    assert storescu(d.dicom_port, shared_data / DERIVED / "nih_00000001_000_explicit-vr-le.dcm")[1] == ["Success"]
    for s in (idle, garbage, truncated):  # the daemon drops each within its 2 s timeouts
        assert _closed_by_peer_within(s, 8.0)
        s.close()
    assert d.proc.poll() is None


def _closed_by_peer_within(s: socket.socket, seconds: float) -> bool:
    """True once the peer closes (EOF or reset), reading and discarding whatever it sends first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if s.recv(65536) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
    return False


def push_and_interrupt(d, files: list, after_acks: int, sig: int) -> list[str]:  # noqa: ANN001
    """Push with storescu, send `sig` to the daemon after `after_acks` acknowledgements; return the
    files the daemon acknowledged (what the PACS may now forget)."""
    proc = subprocess.Popen(["storescu", "-v", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port), *map(str, files)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TCP_NODELAY": "1"})
    acked: list[str] = []
    sending = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Sending file:" in line:
            sending = line.split("Sending file:")[1].strip()
        if "Received Store Response (Success)" in line:
            acked.append(sending)
            if len(acked) == after_acks:
                d.proc.send_signal(sig)
                if sig == signal.SIGKILL:
                    break
    proc.kill()
    proc.wait()
    return acked


def test_kill9_loses_no_acknowledged_instance(daemon_factory, shared_data, tmp_path):
    files = copy_with_new_uids(shared_data / DERIVED / "nih_00000001_000_explicit-vr-le.dcm", tmp_path / "push", 60)
    d = daemon_factory().start()
    acked = push_and_interrupt(d, files, 25, signal.SIGKILL)
    d.proc.wait()
    d.proc = None
    d._log.close()
    assert len(acked) == 25
    d.start()  # restart on the same state: recovery runs before serving
    engine, keys, vault = state(d)
    with engine.connect() as c:
        rows = {r.sop_instance_uid: r for r in c.execute(select(Instance.sop_instance_uid, Instance.vault_object))}
        jobs = c.execute(select(func.count()).select_from(Job)).scalar()
    for path in acked:
        original = pydicom.dcmread(path, stop_before_pixels=True)
        pseudo = pseudonymize_uid(keys.uid_key, str(original.SOPInstanceUID))
        assert pseudo in rows, "an acknowledged instance is missing after kill -9"
        assert pydicom.dcmread(io.BytesIO(vault.get(rows[pseudo].vault_object))).SOPInstanceUID == pseudo
    assert jobs == len(rows)  # one job per stored instance, nothing twice
    assert not [p for p in (d.state_dir / "vault").rglob("*") if p.name.endswith(".tmp")], "temp files left"
    # The rest of the push, resent by the PACS, completes.
    _, statuses = storescu(d.dicom_port, *files)
    assert statuses == ["Success"] * len(files)
    assert count(engine, Instance) == len(files)


def test_planted_identifiers_appear_in_no_file_row_or_log_line(daemon_factory, shared_data, tmp_path):
    marker = "ZZMARKER"
    markers = {"PatientName": f"{marker}^NAME", "PatientID": f"{marker}ID", "AccessionNumber": f"{marker}ACC",
               "InstitutionName": f"{marker} HOSPITAL", "ReferringPhysicianName": f"{marker}^DOC",
               "StudyID": f"{marker}SID", "OtherPatientIDs": f"{marker}OTHER", "PatientAddress": f"{marker} STREET",
               "StudyDescription": f"CHEST {marker}", "StationName": f"{marker}STN"}
    files = copy_with_new_uids(shared_data / DERIVED / "nih_00000001_000_explicit-vr-le.dcm", tmp_path / "phi", 3,
                               markers=markers)
    d = daemon_factory({"CXRD_LOG__LEVEL": "debug"}).start()
    assert storescu(d.dicom_port, *files)[1] == ["Success"] * 3
    assert d.cli("status").returncode == 0
    assert d.stop() == 0
    originals = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    needles = [marker.encode()] + [u.encode() for u in originals]
    scanned = 0
    for path in [*d.state_dir.rglob("*"), d.log_path]:
        if path.is_file():
            blob = path.read_bytes()
            scanned += 1
            for needle in needles:
                assert needle not in blob, f"identifier found in {path.relative_to(path.parents[1])}"
            assert blob[128:132] != b"DICM", f"clear DICOM file at {path}"
    assert scanned >= 5
    # The database content too, row by row (the file scan covers pages; this covers the WAL-merged view).
    engine = create_engine(f"sqlite:///{d.state_dir / 'cxrd.db'}")
    with engine.connect() as c:
        for table in ("instances", "jobs", "audit_events", "reid_map"):
            for row in c.execute(text(f"SELECT * FROM {table}")):
                flat = repr(tuple(row)).encode()
                assert marker.encode() not in flat and not any(u.encode() in flat for u in originals)


def test_what_the_profile_does_not_list_never_reaches_the_stored_object(daemon_factory, shared_data, tmp_path):
    """Planted where Table E.1-1 does not look: an unknown public tag, a retired one, a name nested in a
    sequence the table does not list, and an age over 89. The stored objects, decrypted, hold none of it."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    marker = "ZZUNLISTED"
    files = copy_with_new_uids(shared_data / DERIVED / "nih_00000001_000_explicit-vr-le.dcm", tmp_path / "unl", 2)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.add(DataElement(0x00101234, "LO", f"{marker}UNKNOWN"))    # not in the DICOM dictionary
        ds.add(DataElement(0x00080010, "SH", f"{marker}RET"))        # Recognition Code, retired
        item = Dataset()
        item.CodeValue, item.PatientName = "P1", f"{marker}^NESTED"
        ds.PerformedProtocolCodeSequence = Sequence([item])          # not in the table: recursed
        ds.PatientAge = "097Y"
        ds.save_as(path, enforce_file_format=True)
    d = daemon_factory().start()
    assert storescu(d.dicom_port, *files)[1] == ["Success"] * 2
    assert d.stop() == 0
    engine, keys, vault = state(d)
    with engine.connect() as c:
        objects = [r[0] for r in c.execute(select(Instance.vault_object))]
    assert len(objects) == 2
    for object_id in objects:
        plain = vault.get(object_id)
        assert marker.encode() not in plain
        assert pydicom.dcmread(io.BytesIO(plain), stop_before_pixels=True).PatientAge == "090Y"


def test_pixel_data_that_is_not_what_its_header_says_is_refused_not_stored(daemon_factory, shared_data, tmp_path):
    """Truncated native pixels (60 % of what Rows x Columns declare) and a JPEG 2000 image declaring
    65535 x 65535: each gets a failure status at once, is audited with the reason, and nothing is stored
    or queued (the worker would otherwise fail on it out of the sender's sight, or try to decode it)."""
    truncated = copy_with_new_uids(shared_data / DERIVED / "nih_00000001_000_explicit-vr-le.dcm",
                                   tmp_path / "trunc", 1)[0]
    ds = pydicom.dcmread(truncated)
    ds.PixelData = ds.PixelData[: int(len(ds.PixelData) * 0.6) // 2 * 2]
    ds.save_as(truncated, enforce_file_format=True)
    bomb = copy_with_new_uids(shared_data / DERIVED / "nih_00000001_000_j2k-lossless.dcm", tmp_path / "bomb", 1)[0]
    ds = pydicom.dcmread(bomb)
    ds.Rows = ds.Columns = 65535
    ds.save_as(bomb, enforce_file_format=True)
    d = daemon_factory().start()
    for f in (truncated, bomb):
        r, statuses = storescu(d.dicom_port, f)
        assert statuses == ["Error: CannotUnderstand"], r.stdout + r.stderr  # dcmtk's name for 0xC2xx
    engine, _, _ = state(d)
    assert count(engine, Instance) == 0 and count(engine, Job) == 0
    with engine.connect() as c:
        reasons = [json.loads(r[0])["reason"] for r in c.execute(select(AuditEvent.details)
                                                                  .where(AuditEvent.event_type == "instance.failed"))]
    assert any("pixel data is" in r for r in reasons) and any("dicom.max_pixels" in r for r in reasons)
    assert stored_objects(d) == []
    assert d.stop() == 0


def test_sigterm_mid_push_finishes_in_flight_work_and_exits_0_within_the_bound(daemon_factory, shared_data, tmp_path):
    files = copy_with_new_uids(shared_data / DERIVED / "nih_00000001_000_explicit-vr-le.dcm", tmp_path / "term", 40)
    d = daemon_factory().start()
    t_term = time.monotonic()
    acked = push_and_interrupt(d, files, 5, signal.SIGTERM)
    rc = d.proc.wait(60)
    assert rc == 0 and time.monotonic() - t_term < 45  # drain bound 20 s, plus stopping the stages
    d.proc = None
    d._log.close()
    engine, keys, vault = state(d)
    with engine.connect() as c:
        stored = {r[0]: r[1] for r in c.execute(select(Instance.sop_instance_uid, Instance.vault_object))}
    for path in acked:
        pseudo = pseudonymize_uid(keys.uid_key, str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        assert pseudo in stored and vault.get(stored[pseudo])
    assert "event=service.stopped" in d.log_text()


def test_a_constraint_failure_that_is_not_a_duplicate_is_a_failure_not_success(daemon_factory, shared_data):
    """Duplicates are recognised by the unique index on the SOP Instance UID. Any other constraint
    refusing the rows (here a real SQLite trigger on the jobs table) must reach the sender as a
    failure, leave no object behind and be audited, never pass as an already-stored duplicate."""
    import sqlite3
    d = daemon_factory().start()
    con = sqlite3.connect(d.state_dir / "cxrd.db")
    con.execute("CREATE TRIGGER refuse_jobs BEFORE INSERT ON jobs BEGIN SELECT RAISE(ABORT, 'refused'); END")
    con.commit()
    f = shared_data / DERIVED / "nih_00000001_000_explicit-vr-le.dcm"
    r, statuses = storescu(d.dicom_port, f)
    assert statuses == ["Error: CannotUnderstand"], r.stdout[-400:]  # dcmtk's name for 0xC2xx: 0xC211 here
    assert stored_objects(d) == []
    engine, _, _ = state(d)
    assert count(engine, Instance) == 0
    with engine.connect() as c:
        failed = c.execute(select(AuditEvent.details).where(AuditEvent.event_type == "instance.failed")).scalars().all()
    assert len(failed) == 1 and "constraint" in failed[0]
    con.execute("DROP TRIGGER refuse_jobs")
    con.commit()
    con.close()
    assert storescu(d.dicom_port, f)[1] == ["Success"]  # the PACS's retry then succeeds
    assert count(engine, Instance) == 1
    assert "Traceback" not in d.log_text()
    assert d.stop() == 0


def test_the_daemon_serves_with_the_receive_path_it_logs(daemon_factory, shared_data):
    """One log line says whether the adjustments are installed and, if not, why; and the daemon
    stores either way."""
    d = daemon_factory().start()
    lines = [line for line in d.log_text().splitlines() if "event=dicom.adjustments" in line]
    assert len(lines) == 1, lines
    path = daemon_factory.receive_path
    if path == "adjusted":
        assert "installed=yes" in lines[0] and "pynetdicom=3.0.4" in lines[0]
    else:
        assert "installed=no" in lines[0] and "pynetdicom=stock" in lines[0]
        assert (f"pynetdicom {UPGRADED_PYNETDICOM}" if path == "pynetdicom-upgraded" else "switched off") in lines[0]
    assert storescu(d.dicom_port, shared_data / DERIVED / "nih_00000001_000_explicit-vr-le.dcm")[1] == ["Success"]
    assert d.stop() == 0
