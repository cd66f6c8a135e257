"""The sealed re-identification map and the audited break-glass lookup."""
from __future__ import annotations

import io
import os

import pydicom
import pytest
from sqlalchemy import select, text

from storage import audit, db, reid
from storage.deid import deidentify
from storage.errors import ReidError, TamperError
from storage.keys import DeidKeys
from storage.models import AuditEvent, ReidEntry

REID_KEY, AUDIT_KEY = os.urandom(32), os.urandom(32)
DEID = DeidKeys(os.urandom(32), os.urandom(32))
MARK = "PHIMARK^SENTINEL"


@pytest.fixture
def sessions(tmp_path):
    eng = db.engine_from_url(f"sqlite:///{tmp_path / 'cxrd.db'}")
    db.migrate(eng)
    yield db.sessions(eng)
    eng.dispose()


@pytest.fixture
def stored(shared_data, sessions):
    """Two real radiographs of one planted patient, de-identified and mapped like ingest does."""
    results = []
    for name in ("nih_00000001_000_explicit-vr-le.dcm", "nih_00000001_000_rle-lossless.dcm"):
        ds = pydicom.dcmread(shared_data / "dicom" / "derived" / name)
        ds.PatientName, ds.PatientID, ds.AccessionNumber = MARK, "MRN-PHIMARK-77", "ACC-PHIMARK"
        results.append(deidentify(ds, DEID))
    with sessions.begin() as s:
        for r in results:
            reid.store_entry(s, REID_KEY, pseudo_sop_uid=r.sop_instance_uid, pseudo_study_uid=r.study_uid,
                             original=r.original)
    return results


def test_sealed_entry_round_trips_and_binds_the_pseudonym():
    original = {"patient_name": MARK, "study_uid": "1.2.3"}
    blob = reid.seal_reid(REID_KEY, "2.25.5", original)
    assert MARK.encode() not in blob and b"1.2.3" not in blob
    assert reid.open_reid(REID_KEY, "2.25.5", blob) == original
    with pytest.raises(TamperError, match="2.25.6"):
        reid.open_reid(REID_KEY, "2.25.6", blob)
    with pytest.raises(TamperError):
        reid.open_reid(os.urandom(32), "2.25.5", blob)


def test_no_planted_phi_in_the_database_or_the_deidentified_bytes(stored, sessions, tmp_path):
    raw_db = b"".join(p.read_bytes() for p in tmp_path.glob("cxrd.db*"))
    for needle in (b"PHIMARK", MARK.encode(), stored[0].original["study_uid"].encode()):
        assert needle not in raw_db
    for r in stored:
        buf = io.BytesIO()
        r.dataset.save_as(buf, enforce_file_format=True)
        assert b"PHIMARK" not in buf.getvalue()


def test_reidentify_by_study_returns_originals_and_is_audited(stored, sessions):
    study = stored[0].study_uid
    with sessions() as s:
        rows = reid.reidentify(s, REID_KEY, AUDIT_KEY, reason="ticket 42: send report", actor="os:alice",
                               study=study)
        s.commit()
    assert len(rows) == 2 and {r["patient_name"] for r in rows} == {MARK}
    assert {r["pseudo_sop_instance_uid"] for r in rows} == {r.sop_instance_uid for r in stored}
    assert rows[0]["accession_number"] == "ACC-PHIMARK"
    with sessions() as s:
        event = s.execute(select(AuditEvent)).scalars().one()
        assert (event.event_type, event.event_id, event.actor, event.study_uid) == \
            ("reid.lookup", "110110", "os:alice", study)
        assert "ticket 42" in event.details and "PHIMARK" not in event.details
        assert audit.verify(s, AUDIT_KEY).ok


def test_reidentify_without_reason_is_refused_and_audited(stored, sessions):
    with sessions() as s:
        with pytest.raises(ReidError, match="reason"):
            reid.reidentify(s, REID_KEY, AUDIT_KEY, reason="  ", actor="os:bob",
                            instance=stored[0].sop_instance_uid)
        s.commit()
    with sessions() as s:
        event = s.execute(select(AuditEvent)).scalars().one()
        assert event.event_type == "reid.refused" and event.outcome == 4


def test_a_moved_sealed_entry_is_a_security_alert(stored, sessions):
    a, b = stored
    with sessions.begin() as s:
        s.execute(text("UPDATE reid_map SET sealed = (SELECT sealed FROM reid_map WHERE sop_instance_uid = :b) "
                       "WHERE sop_instance_uid = :a"), {"a": a.sop_instance_uid, "b": b.sop_instance_uid})
    with sessions() as s:
        with pytest.raises(TamperError, match=a.sop_instance_uid):
            reid.reidentify(s, REID_KEY, AUDIT_KEY, reason="check", actor="os:x", instance=a.sop_instance_uid)
        s.commit()
    with sessions() as s:
        assert s.execute(select(AuditEvent.event_type)).scalars().all() == ["security.tamper"]
        assert s.get(ReidEntry, b.sop_instance_uid) is not None
