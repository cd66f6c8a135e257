"""`cxrd model shadow|report|promote` and `cxrd retrain --list` with live shadow data, and the
automatic promotion of a shadow that retraining put there. The live data are hand-built rows (real
HMACs, real tables): a candidate that ranks Effusion backwards against one that ranks it right."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from cxrmodel.labels import LABELS
from cxrmodel.network import build_model
from cxrmodel.preprocess import PreprocessSpec
from cxrmodel.registry import Registry
from storage import records
from storage import shadow as shadow_rows
from daemon.stages.training_data import manual_states
from storage.models import AuditEvent, Instance, Label, Prediction, RetrainRun, utcnow

# Evaluation on record that clears the default floor (min_positives 10): one judged finding.
PASSING = {"evaluated_on": "test", "n_images": 100, "mean_auroc": 0.8, "mean_auroc_ci95": [0.7, 0.9],
           "auroc": {"Effusion": 0.8}, "auroc_ci95": {"Effusion": [0.7, 0.9]}, "positives": {"Effusion": 30},
           "promotion_evidence": {"min_positives": 10, "findings": ["Effusion"], "mean_auroc": 0.8,
                                  "mean_auroc_ci95": [0.7, 0.9], "n_boot": 100}}


def runtime():  # noqa: ANN201
    from config import load_settings
    from daemon.runtime import Runtime
    return Runtime(load_settings(None))


@pytest.fixture()
def models(cli_state):  # noqa: ANN001, ANN201
    reg = Registry(cli_state / "models")
    reg.add(build_model(seed=0), version="cur", promote=True, metrics=PASSING)
    reg.add(build_model(seed=1), version="cand", metrics=PASSING)
    return reg


def plant(rt, n: int, candidate_backwards: bool, start: int = 0) -> None:  # noqa: ANN001
    """n live studies of one image, half with Effusion: the current model ranks them right; the
    candidate ranks them backwards (or exactly like the current model)."""
    key = rt.keys.record_key
    with rt.sessions() as s, s.begin():
        for i in range(start, start + n):
            iid, sop, pos = i + 1, f"2.25.{5000 + i}", i % 2 == 0
            s.add(Instance(id=iid, sop_instance_uid=sop, study_uid=f"2.25.{7000 + i}", series_uid="2.25.1",
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.7", state="reported"))
            s.flush()
            eff = (0.6 if pos else 0.1) + 0.3 * i / (start + n)
            cur = {lab: (eff if lab == "Effusion" else 0.05) for lab in LABELS}
            cand = {**cur, "Effusion": 1 - eff} if candidate_backwards else dict(cur)
            for lab, p in cur.items():
                s.add(Prediction(instance_id=iid, model_version="cur", label=lab, probability=p, threshold=0.5,
                                 positive=p >= 0.5, mac=records.mac(key, sop, "cur", lab, p, 0.5, p >= 0.5)))
            shadow_rows.record(s, key, "cand", "cur", [(iid, sop, cand)], utcnow())
            findings = "Effusion" if pos else "No Finding"
            s.add(Label(instance_id=iid, findings=findings, states=manual_states(findings)))


def model_events(rt) -> list[tuple[str, int, dict]]:  # noqa: ANN001
    from sqlalchemy import select
    with rt.read_sessions() as s:
        return [(t, o, json.loads(d)) for t, o, d in s.execute(
            select(AuditEvent.event_type, AuditEvent.outcome, AuditEvent.details).order_by(AuditEvent.seq))
            if t.startswith("model.")]


def test_choose_show_and_stop_a_shadow_all_audited(cli_captured, models):
    cxrd = cli_captured
    code, out, _ = cxrd("model", "shadow")
    assert code == 0 and out.startswith("no shadow")
    code, out, err = cxrd("model", "shadow", "cand")
    assert code == 0, err
    assert "cand runs on new images beside the current model cur" in out and "nothing it says is sent" in out
    assert models.shadow()["version"] == "cand" and models.shadow()["origin"] == "admin"
    code, out, _ = cxrd("model", "list")
    assert "s cand" in out and "* cur" in out and "s shadow" in out
    listed = json.loads(cxrd("model", "list", "--format", "json")[1])
    assert {m["version"]: m["shadow"] for m in listed} == {"cur": False, "cand": True}
    code, out, _ = cxrd("model", "shadow")
    assert "shadow: cand" in out and "no live image scored in shadow yet" in out
    # the current model cannot be its own shadow; a version that prepares images otherwise is refused
    code, _, err = cxrd("model", "shadow", "cur")
    assert code == 1 and "is the current model" in err and err.count("\n") == 1
    models.add(build_model(seed=2), version="big", preprocessing=PreprocessSpec(size=512))
    code, _, err = cxrd("model", "shadow", "big")
    assert code == 1 and "prepares images differently from the current model cur" in err and "512 px" in err
    assert err.count("\n") == 1 and models.shadow()["version"] == "cand"
    code, _, err = cxrd("model", "shadow", "cand", "--off")
    assert code == 2 and "not both" in err
    code, out, _ = cxrd("model", "shadow", "--off")
    assert code == 0 and "shadow off (was cand)" in out and models.shadow()["version"] is None
    events = [(t, d.get("version")) for t, _, d in model_events(runtime())]
    assert events == [("model.shadow", "cand"), ("model.shadow.off", "cand")]


def test_a_candidate_worse_on_live_studies_is_refused_unless_forced(cli_captured, models):
    cxrd = cli_captured
    rt = runtime()
    models.set_shadow("cand")
    plant(rt, 40, candidate_backwards=True)
    with rt.sessions() as s, s.begin():
        s.add(RetrainRun(trigger="schedule", outcome="shadowed", candidate_version="cand", report="{}"))
    code, out, err = cxrd("model", "report", "cand")
    assert code == 0, err
    assert "Live shadow comparison: candidate cand vs current cur" in out
    assert "worse: mean AUROC 0.000 vs 1.000, difference -1.000" in out and "40 live labeled studies" in out
    assert "Effusion" in out and "Promotion floor: clears" in out
    live = json.loads(cxrd("model", "report", "cand", "--format", "json")[1])["live_shadow"]
    assert live["verdict"] == "worse" and live["studies"] == 40 and live["mean_difference_ci95"][1] < 0
    code, out, _ = cxrd("retrain", "--list")
    assert "live shadow vs cur: worse" in out and "shadow now: cand" in out
    [run] = json.loads(cxrd("retrain", "--list", "--format", "json")[1])
    assert run["live_shadow"]["verdict"] == "worse"

    code, out, err = cxrd("model", "promote", "cand")
    assert code == 1 and err.count("\n") == 1
    assert "cand not promoted: live shadow comparison with cur: worse" in err and "--force" in err
    assert "Live shadow comparison" in out  # the evidence is shown before the refusal
    assert models.current_version() == "cur"
    code, out, err = cxrd("model", "promote", "cand", "--force")
    assert code == 0, err
    assert "promoted by --force, overriding: live shadow comparison with cur: worse" in out
    assert models.current_version() == "cand" and models.shadow()["version"] is None
    rejected, promoted = [(t, o, d) for t, o, d in model_events(rt) if t in ("model.rejected", "model.promoted")]
    assert rejected[1] == 4 and rejected[2]["live_shadow"]["verdict"] == "worse"
    assert rejected[2]["refused"][0].startswith("live shadow comparison with cur: worse")
    assert promoted[2]["forced"] is True and promoted[2]["live_shadow"]["verdict"] == "worse"
    assert promoted[2]["overridden"] == rejected[2]["refused"]


def test_a_candidate_no_worse_on_live_studies_is_promoted_with_the_comparison_on_record(cli_captured, models):
    rt = runtime()
    models.set_shadow("cand")
    plant(rt, 40, candidate_backwards=False)
    code, out, err = cli_captured("model", "promote", "cand")
    assert code == 0, err
    assert "no significant difference" in out and "current model: cand (was cur)" in out
    [promoted] = [d for t, _, d in model_events(rt) if t == "model.promoted"]
    assert promoted["forced"] is False and promoted["live_shadow"]["verdict"] == "no significant difference"


def test_rows_edited_in_sql_are_left_out_of_the_comparison(cli_state, models):
    from daemon.stages.shadow import live_comparison
    rt = runtime()
    plant(rt, 40, candidate_backwards=False)
    with rt.sessions() as s, s.begin():
        stored = s.execute(text("SELECT probabilities FROM shadow_predictions WHERE instance_id = 1")).scalar()
        probs = json.loads(stored)
        probs["Effusion"] = 0.0  # a candidate made to look better by an edit
        s.execute(text("UPDATE shadow_predictions SET probabilities = :p WHERE instance_id = 1"),
                  {"p": shadow_rows.canonical(probs)})
        s.execute(text("UPDATE predictions SET probability = 0.99 WHERE instance_id = 2 AND label = 'Mass'"))
    c = live_comparison(rt.read_sessions, rt.keys, "cand", "cur", min_positives=10, n_boot=50)
    assert c.images == 38 and "2 image(s) left out: a row failed its HMAC" in c.summary


def test_a_retrained_shadow_is_promoted_once_enough_live_studies_agree(cli_state, models, monkeypatch):
    from daemon.stages.model_changes import settle_retrained_shadow
    monkeypatch.setenv("CXRD_MODEL__SHADOW__MIN_LABELED_STUDIES", "40")
    rt = runtime()
    models.set_shadow("cand", "admin")
    plant(rt, 20, candidate_backwards=False)
    assert settle_retrained_shadow(rt) is None  # an administrator's shadow is never decided for them
    models.set_shadow("cand", "retrain:7")
    decision = settle_retrained_shadow(rt)
    assert decision["outcome"] == "waiting" and decision["studies"] == 20 and decision["needed"] == 40
    plant(rt, 20, candidate_backwards=False, start=20)
    decision = settle_retrained_shadow(rt)
    assert decision["outcome"] == "promoted" and models.current_version() == "cand"
    [(actor_event, details)] = [(t, d) for t, _, d in model_events(rt) if t == "model.promoted"]
    assert details["live_shadow"]["studies"] == 40 and "retrain:7" in details["why"]


def test_a_retrained_shadow_worse_on_live_studies_is_retired(cli_state, models, monkeypatch):
    from daemon.stages.model_changes import settle_retrained_shadow
    monkeypatch.setenv("CXRD_MODEL__SHADOW__MIN_LABELED_STUDIES", "40")
    rt = runtime()
    models.set_shadow("cand", "retrain:3")
    plant(rt, 40, candidate_backwards=True)
    decision = settle_retrained_shadow(rt)
    assert decision["outcome"] == "retired" and models.current_version() == "cur"
    assert models.shadow()["version"] is None and models.shadow()["origin"].startswith("retired: live shadow")
    [rejected] = [d for t, _, d in model_events(rt) if t == "model.rejected"]
    assert rejected["live_shadow"]["verdict"] == "worse"
