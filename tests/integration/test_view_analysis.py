"""Only frontal views are analysed: real NIH pixels pushed with dcmtk storescu to a running `cxrd serve`,
as a PA and as laterals written three ways (ViewPosition, View Code Sequence, SeriesDescription).
Every one is acknowledged and stored encrypted; only the PA is classified; each lateral's reason is
on its row, in its audit event and counted by `cxrd status`."""
from __future__ import annotations

import json
import time

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import func, select

from conftest import copy_with_new_uids, state_rows, storescu, wait_until
from cxrmodel.network import build_model
from cxrmodel.registry import Registry
from storage.deid import pseudonymize_uid
from storage.keys import load_keys
from storage.models import AuditEvent, Instance, Job, Prediction

SRC = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"  # real pixels, no view attribute at all
FAST = {"CXRD_MODEL__BACKEND": "fp32", "CXRD_MODEL__MAX_BATCH_WAIT_MS": "10"}


def lateral_code() -> Sequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "399173006", "SCT", "left lateral"
    return Sequence([item])


def test_laterals_are_stored_not_classified_with_the_reason_recorded_and_audited(daemon_factory, shared_data,
                                                                                 tmp_path):
    d = daemon_factory(FAST)
    d.state_dir.mkdir(parents=True)
    d.cli("init", check=True)
    Registry(d.state_dir / "models").add(build_model(seed=0), promote=True)
    d.start()
    src = shared_data / SRC
    sent = {
        "pa": copy_with_new_uids(src, tmp_path / "pa", 1, markers={"ViewPosition": "PA"}),
        "ll": copy_with_new_uids(src, tmp_path / "ll", 1, markers={"ViewPosition": "LL"}),
        "code": copy_with_new_uids(src, tmp_path / "code", 1, markers={"ViewCodeSequence": lateral_code()}),
        "text": copy_with_new_uids(src, tmp_path / "text", 1, markers={"SeriesDescription": "LAT"}),
    }
    files = [f for fs in sent.values() for f in fs]
    assert storescu(d.dicom_port, *files)[1] == ["Success"] * 4  # acknowledged: stored, analysed or not

    keys = load_keys(d.state_dir / "keys" / "master.key", d.state_dir / "keys" / "keyring.json")
    import pydicom
    pseudo = {name: pseudonymize_uid(keys.uid_key, str(pydicom.dcmread(fs[0], stop_before_pixels=True)
                                                         .SOPInstanceUID)) for name, fs in sent.items()}
    wait_until(lambda: state_rows(d.state_dir, select(func.count()).select_from(Prediction))[0][0] == 14)
    time.sleep(1.0)  # the worker would have claimed anything else by now
    by_sop = {r.sop_instance_uid: r for r in state_rows(d.state_dir, select(
        Instance.id, Instance.sop_instance_uid, Instance.state, Instance.view, Instance.analysis_reason,
        Instance.vault_object))}
    assert all(r.vault_object for r in by_sop.values())  # every one stored (encrypted in the vault)
    pa = by_sop[pseudo["pa"]]
    assert pa.state in ("predicted", "reported") and pa.view == "frontal"
    assert pa.analysis_reason == "frontal view (ViewPosition PA)"
    expected = {"ll": "lateral view (ViewPosition LL)", "code": "lateral view (View Code Sequence left lateral)",
                "text": "lateral view (SeriesDescription)"}
    for name, start in expected.items():
        r = by_sop[pseudo[name]]
        assert r.state == "not_analysed" and r.view == "lateral", name
        assert r.analysis_reason.startswith(start) and "frontal views only" in r.analysis_reason
    predicted = {i for (i,) in state_rows(d.state_dir, select(Prediction.instance_id).distinct())}
    assert predicted == {pa.id}
    jobs = {i for (i,) in state_rows(d.state_dir, select(Job.instance_id))}
    assert jobs == {pa.id}  # no job was ever queued for a lateral

    audited = {obj: json.loads(details) for obj, details in state_rows(d.state_dir, select(
        AuditEvent.object_uid, AuditEvent.details).where(AuditEvent.event_type == "instance.stored"))}
    assert audited[pseudo["pa"]]["analysed"] is True
    for name, start in expected.items():
        ev = audited[pseudo[name]]
        assert ev["analysed"] is False and ev["view"] == "lateral" and ev["analysis_reason"].startswith(start)

    status = d.cli("status", "--format", "json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["instances"]["not_analysed"] == 3 and info["not_analysed"] == {"lateral": 3}
    assert info["queue_depth"] == 0
    text = d.cli("status").stdout
    assert "not analysed    : lateral 3" in text
    assert d.stop() == 0
