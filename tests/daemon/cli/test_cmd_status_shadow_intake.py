"""`cxrd status` and /metrics name the shadow candidate (version, since, images scored) and count
report intake (reports by state) and the ground-truth store (labels by source); real tables, real
registry pointers, shadow rows with real HMACs."""
from __future__ import annotations

import json

from cxrmodel.labels import LABELS
from cxrmodel.network import build_model
from cxrmodel.registry import Registry
from daemon.ops.prometheus import Metrics, StateCollector
from daemon.stages.training_data import manual_states
from storage import shadow as shadow_rows
from storage.models import Instance, Label, utcnow
from storage.reports import IncomingReport, record_report


def runtime():  # noqa: ANN201
    from config import load_settings
    from daemon.runtime import Runtime
    return Runtime(load_settings(None))


def plant(rt, scored: int) -> None:  # noqa: ANN001
    """`scored` images the shadow "cand" scored beside "cur", one with a manual label; one report
    waiting for its images and one refused (not final)."""
    with rt.sessions() as s, s.begin():
        for i in range(scored):
            inst = Instance(sop_instance_uid=f"2.25.{900 + i}", study_uid=f"2.25.{800 + i}", series_uid="2.25.1",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.1", state="predicted")
            s.add(inst)
            s.flush()
            shadow_rows.record(s, rt.keys.record_key, "cand", "cur",
                               [(inst.id, inst.sop_instance_uid, {lab: 0.2 for lab in LABELS})], utcnow())
            if i == 0:
                s.add(Label(instance_id=inst.id, findings="Effusion", states=manual_states("Effusion")))
    for control, status in (("C1", "F"), ("C2", "P")):
        record_report(rt.sessions, rt.vault, rt.keys,
                      IncomingReport(sender="RIS^H", message_type="ORU^R01", control_id=control, result_status=status,
                                     study_uid="1.2.3.4.5", accession="", text="IMPRESSION: Cardiomegaly."),
                      {"Cardiomegaly": "positive"}, keep_text=False, match_wait_s=3600)


def test_status_and_metrics_name_the_shadow_and_count_reports_and_labels(cli_captured, cli_state):
    cxrd = cli_captured
    code, out, err = cxrd("status")
    assert code == 0, err
    assert "shadow model    : none" in out
    assert "reports         : waiting 0, matched 0, labelled 0, expired 0, refused 0" in out
    assert "labels          : manual 0, report 0 (0 in all; manual wins)" in out

    reg = Registry(cli_state / "models")
    reg.add(build_model(seed=0), version="cur", promote=True)
    reg.add(build_model(seed=1), version="cand")
    reg.set_shadow("cand", "admin")
    rt = runtime()
    plant(rt, 3)
    code, out, err = cxrd("status", "--format", "json")
    assert code == 0, err
    info = json.loads(out)
    since = reg.shadow()["since"]
    assert info["shadow"] == {"version": "cand", "origin": "admin", "since": since, "images_scored": 3}
    assert info["reports"] == {"waiting": 1, "matched": 0, "labelled": 0, "expired": 0, "refused": 1}
    assert info["labels"] == {"manual": 1, "report": 0}
    code, out, _ = cxrd("status")
    assert f"shadow model    : cand (since {since}, admin; 3 image(s) scored, nothing sent)" in out
    assert "reports         : waiting 1, matched 0, labelled 0, expired 0, refused 1" in out

    metrics = Metrics()
    metrics.attach_state(StateCollector(rt.read_sessions, cli_state, 0, lambda: None, cache_s=0))
    text = metrics.render().decode()
    assert 'cxrd_shadow_model_info{version="cand"} 1.0' in text
    assert 'cxrd_shadow_predictions_total{model="cand"} 3.0' in text
    assert 'cxrd_reports{state="waiting"} 1.0' in text and 'cxrd_labels{source="manual"} 1.0' in text

    reg.set_shadow(None, "admin")  # turned off: no version named, the count of what it scored stays
    code, out, _ = cxrd("status")
    assert "shadow model    : none" in out
    text = Metrics()
    text.attach_state(StateCollector(rt.read_sessions, cli_state, 0, lambda: None, cache_s=0))
    rendered = text.render().decode()
    assert "cxrd_shadow_model_info{" not in rendered
    assert 'cxrd_shadow_predictions_total{model="cand"} 3.0' in rendered
