"""`deid.burned_in_annotation` with a real radiograph over a real association: refused images get
0xC220 and leave nothing behind; flagged ones are stored claiming exactly what is known."""
from __future__ import annotations

import io
import json
import re

import pydicom
from sqlalchemy import select

from conftest import copy_with_new_uids, state_rows, storescu
from storage.keys import load_keys
from storage.models import AuditEvent, Instance
from storage.vault import Vault

SRC = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"


def _with_burned_in(files, value):  # noqa: ANN001, ANN202
    for path in files:
        ds = pydicom.dcmread(path)
        if value is None:
            ds.pop("BurnedInAnnotation", None)
        else:
            ds.BurnedInAnnotation = value
        ds.save_as(path, enforce_file_format=True)
    return files


def test_refuse_answers_cannot_deidentify_for_yes_and_absent_and_stores_nothing(daemon_factory, shared_data,
                                                                               tmp_path):
    yes = _with_burned_in(copy_with_new_uids(shared_data / SRC, tmp_path / "yes", 1), "YES")
    absent = _with_burned_in(copy_with_new_uids(shared_data / SRC, tmp_path / "absent", 1), None)
    no = _with_burned_in(copy_with_new_uids(shared_data / SRC, tmp_path / "no", 1), "NO")
    d = daemon_factory({"CXRD_DEID__BURNED_IN_ANNOTATION": "refuse"}).start()
    for refused in (yes, absent):  # storescu stops at a failure: one association each
        r, _ = storescu(d.dicom_port, *refused, extra=("-d",))
        assert re.findall(r"DIMSE Status\s*:\s*(0x[0-9a-f]{4})", r.stdout + r.stderr) == ["0xc220"]
    assert storescu(d.dicom_port, *no)[1] == ["Success"]
    assert d.stop() == 0
    assert len(state_rows(d.state_dir, select(Instance.id))) == 1
    assert [p for p in (d.state_dir / "vault").rglob("*.cxv") if p.stat().st_size > 0].__len__() == 1
    events = state_rows(d.state_dir, select(AuditEvent.event_type, AuditEvent.details))
    failed = [json.loads(det)["reason"] for e, det in events if e == "instance.failed"]
    assert sorted(failed) == ["burned-in annotation YES (policy refuse)",
                              "burned-in annotation not declared (policy refuse)"]
    assert "store.burned_in_refused" in d.log_text()


def test_flag_stores_them_saying_identity_not_removed(daemon_factory, shared_data, tmp_path):
    yes = _with_burned_in(copy_with_new_uids(shared_data / SRC, tmp_path / "yes", 1), "YES")
    absent = _with_burned_in(copy_with_new_uids(shared_data / SRC, tmp_path / "absent", 1), None)
    d = daemon_factory().start()  # the default policy is flag
    assert storescu(d.dicom_port, *yes, *absent)[1] == ["Success"] * 2
    assert d.stop() == 0
    keys = load_keys(d.state_dir / "keys" / "master.key", d.state_dir / "keys" / "keyring.json")
    vault = Vault(d.state_dir / "vault", keys.keyring)
    stored = {flag: pydicom.dcmread(io.BytesIO(vault.get(oid)), stop_before_pixels=True)
              for oid, flag in state_rows(d.state_dir, select(Instance.vault_object, Instance.burned_in_annotation))}
    assert set(stored) == {"yes", "unknown"}
    assert stored["yes"].BurnedInAnnotation == "YES" and "BurnedInAnnotation" not in stored["unknown"]
    assert {ds.PatientIdentityRemoved for ds in stored.values()} == {"NO"}
