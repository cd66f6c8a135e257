"""The model watch page, the shadow candidate on the model page and report intake on the dashboard,
in-process (Starlette's TestClient on the real app, a migrated database and a real registry): roles
enforced on the server, numbers equal to what the monitoring job stored and the database holds,
shadow start/stop only with the typed name, audited with the console user and address."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from cxrmodel.labels import LABELS
from cxrmodel.network import build_model
from cxrmodel.preprocess import PreprocessSpec
from cxrmodel.registry import Registry
from daemon.stages import monitoring
from daemon.stages.training_data import manual_states
from storage import records
from storage import shadow as shadow_rows
from storage.models import Instance, Label, MonitorState, Prediction, Report, utcnow

from console_ops_harness import Harness
from console_watch_data import monitoring_pass, watched

WATCH_GETS = ("/watch", "/watch?finding=Effusion")
SHADOW_POSTS = ("/models/shadow/start", "/models/shadow/stop")


@pytest.fixture()
def harness(console_client) -> Harness:  # noqa: ANN001
    return Harness(console_client)


def test_compliance_gets_403_on_every_new_url_and_operations_cannot_change_the_shadow(harness):
    carol, otto, ada = (harness.client("carol", "compliance"), harness.client("otto", "operations"),
                        harness.client("ada", "admin"))
    for url in WATCH_GETS:
        assert carol.http.get(url).status_code == 403, url
        assert otto.http.get(url).status_code == 200, url
        assert ada.http.get(url).status_code == 200, url
    for url in SHADOW_POSTS:
        for who in (carol, otto):
            r = who.http.post(url, data={"csrf_token": who.csrf_token, "version": "v1", "confirm": "v1"})
            assert r.status_code == 403, url
    r = harness.make().http.get("/watch")
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")
    assert 'href="/watch"' in otto.http.get("/operations").text and 'href="/watch"' in ada.http.get("/models").text
    assert 'href="/watch"' not in carol.http.get("/audit").text
    assert harness.audit_rows("model.shadow") == [] and harness.audit_rows("model.shadow.off") == []


def test_before_the_first_pass_the_page_says_so(harness):
    Registry(harness.rt.models_dir).add(build_model(seed=0), version="v1", promote=True)
    page = harness.client("otto", "operations").http.get("/watch").text
    assert 'id="watch-no-pass"' in page and "cxrd monitor report" in page and 'id="watch-model">v1<' in page


def test_watch_page_shows_what_the_last_pass_stored(harness):
    rt = harness.rt
    now = datetime.now(timezone.utc)
    watched(rt, now)
    out = monitoring_pass(rt, now)
    assert out["drift"] is True and "Effusion" in out["drifting"] and "manufacturer" in out["drifting"]
    ops = harness.client("otto", "operations")
    page = ops.http.get("/watch").text
    with rt.read_sessions() as s:
        gauges = {k: (v, a, since) for k, v, a, since in s.execute(
            select(MonitorState.key, MonitorState.value, MonitorState.alarm, MonitorState.alarm_since))}
        truth = monitoring.performance(s, "v1", now - timedelta(days=30), now, min_cases=10, floor=0.5, periods=1)
    psi, alarm, _ = gauges["cxrd_drift_psi{label=Effusion,model=v1}"]
    assert alarm and f'data-psi="Effusion">{psi:.3f}<' in page and 'data-band="Effusion">drift range<' in page
    assert re.search(r'data-verdict="Effusion"><span class="verdict-drift">drift<', page)
    calm = gauges["cxrd_drift_psi{label=Mass,model=v1}"][0]
    assert f'data-psi="Mass">{calm:.3f}<' in page and 'data-band="Mass">stable<' in page
    # the drift alarm and since when (the server's local time)
    _, on, since = gauges["cxrd_drift_alarm{model=v1}"]
    assert on and 'id="watch-drift-alarm">on<' in page
    assert f'since {since.astimezone().strftime("%Y-%m-%d %H:%M")}' in page
    assert 'id="watch-drift-images">80<' in page and 'id="watch-truth-images">80<' in page
    # input characteristics: the new manufacturer, as the job found it
    assert re.search(r'data-input-verdict="manufacturer"><span class="verdict-drift">', page)
    assert "OTHERCO (100%)" in page
    # the score distribution of the most moved finding, drawn server-side with its table
    assert "Effusion: score at each percentile, reference and live" in page and 'id="chart-distribution"' in page
    # live performance: the job's numbers, with the too-few flag where positives are too few
    eff = truth["labels"]["Effusion"]
    lo, hi = eff["auroc_ci95"]
    assert f'data-live-auroc="Effusion">{eff["auroc"]:.3f} ({lo:.3f}–{hi:.3f})<' in page
    assert re.search(r'data-too-few="Mass">too few positives \(n=0\)', page)
    assert 'data-positives="Effusion">40<' in page
    # a chosen finding; an unknown one falls back with a note; no script, no inline style, no UID
    other = ops.http.get("/watch?finding=Mass").text
    assert "Mass: score at each percentile" in other
    assert "No such finding" in ops.http.get("/watch?finding=%3Cscript%3E").text
    for text in (page, other):
        assert "<script" not in text and 'style="' not in text and "2.25." not in text


def test_model_page_shows_the_shadow_and_its_live_comparison(harness):
    rt = harness.rt
    reg = _shadow_models(rt)
    reg.set_shadow("cand", "retrain:7")
    _plant(rt, 30)
    page = harness.client("otto", "operations").http.get("/models").text
    assert 'id="shadow-version">cand<' in page and 'id="shadow-origin">retrain:7<' in page
    assert "promoted automatically" in page and "30 live image(s) scored in shadow" in page
    assert re.search(r'id="shadow-verdict">Live comparison with cur: worse: mean AUROC 0\.000 vs 1\.000', page)
    assert re.search(r'data-current-auroc="Effusion">1\.000 \(', page)
    assert re.search(r'data-candidate-auroc="Effusion">0\.000 \(', page)
    assert "shadow-start-form" not in page and "shadow-stop-form" not in page  # operations only view
    assert "2.25." not in page


def test_admin_starts_and_stops_a_shadow_only_with_the_typed_name_audited(harness):
    rt = harness.rt
    reg = _shadow_models(rt)
    ada = harness.client("ada", "admin")
    page = ada.http.get("/models").text
    assert 'id="shadow-none"' in page and 'id="shadow-start-form"' in page
    assert re.search(r'<option value="cand">cand</option>', page) and '<option value="cur">' not in page
    r = ada.http.post("/models/shadow/start", data={"csrf_token": ada.csrf_token, "version": "cand", "confirm": "can"})
    assert r.status_code == 303 and "confirmation must be the version name" in ada.http.get(r.headers["location"]).text
    assert reg.shadow()["version"] is None and harness.audit_rows("model.shadow") == []
    # a version that prepares images differently is refused by the command line's own check
    r = ada.http.post("/models/shadow/start", data={"csrf_token": ada.csrf_token, "version": "big", "confirm": "big"})
    assert "prepares images differently from the current model cur" in ada.http.get(r.headers["location"]).text
    assert reg.shadow()["version"] is None and harness.audit_rows("model.shadow") == []

    r = ada.http.post("/models/shadow/start", data={"csrf_token": ada.csrf_token, "version": "cand", "confirm": "cand"})
    assert "cand now runs in shadow beside cur" in ada.http.get(r.headers["location"]).text
    assert reg.shadow()["version"] == "cand" and reg.shadow()["origin"] == "console:ada"
    [row] = harness.audit_rows("model.shadow")
    assert (row["actor"], row["host"]) == ("console:ada", "10.9.8.7")
    assert row["details"] == {"version": "cand", "previous": None, "current": "cur", "via": "console"}
    page = ada.http.get("/models").text
    assert 'id="shadow-chosen-by">console:ada<' in page and 'id="shadow-stop-form"' in page

    r = ada.http.post("/models/shadow/stop", data={"csrf_token": ada.csrf_token, "confirm": "cur"})
    assert "confirmation must be the name of the version in shadow (cand)" in ada.http.get(r.headers["location"]).text
    assert reg.shadow()["version"] == "cand" and harness.audit_rows("model.shadow.off") == []
    r = ada.http.post("/models/shadow/stop", data={"csrf_token": ada.csrf_token, "confirm": "cand"})
    assert "Shadow stopped (was cand)" in ada.http.get(r.headers["location"]).text
    assert reg.shadow()["version"] is None and reg.shadow()["origin"] == "stopped by console:ada"
    [off] = harness.audit_rows("model.shadow.off")
    assert (off["actor"], off["host"], off["details"]) == ("console:ada", "10.9.8.7", {"version": "cand", "via": "console"})
    history = ada.http.get("/models").text
    assert "shadow.off" in history and 'id="shadow-none"' in history


def test_dashboard_shows_report_intake_from_the_database(harness, monkeypatch):
    rt = harness.rt
    now = utcnow()
    with rt.sessions() as s, s.begin():
        for i, state in enumerate(["labelled", "labelled", "labelled", "waiting", "expired", "refused"]):
            s.add(Report(message_key=f"k{i}", state=state, received_at=now - timedelta(hours=6 - i)))
        for i in range(5):
            inst = Instance(sop_instance_uid=f"2.25.{30_000 + i}", study_uid=f"2.25.{31_000 + i}", series_uid="2.25.3",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", state="reported")
            s.add(inst)
            s.flush()
            s.add(Label(instance_id=inst.id, findings="No Finding", source="report" if i < 3 else "manual"))
    page = harness.client("otto", "operations").http.get("/operations").text
    for state, n in {"labelled": 3, "waiting": 1, "expired": 1, "refused": 1, "matched": 0}.items():
        assert f'data-report-state="{state}">{n}<' in page, state
    assert 'data-label-source="report">3<' in page and 'data-label-source="manual">2<' in page
    newest = (now - timedelta(hours=1)).astimezone().strftime("%Y-%m-%d %H:%M")
    assert f'id="glance-last-report">{newest}<' in page and 'id="glance-hl7">off<' in page
    monkeypatch.setenv("CXRD_HL7__LISTEN__ENABLED", "true")
    monkeypatch.setenv("CXRD_HL7__LISTEN__PORT", "12575")
    h2 = Harness(harness.make)
    page = h2.client("otto", "operations").http.get("/operations").text
    assert 'id="glance-hl7">on<' in page and ":12575" in page


# -- shadow fixtures: real registry versions, hand-built live rows with real HMACs ---------------------------
def _shadow_models(rt) -> Registry:  # noqa: ANN001
    reg = Registry(rt.models_dir)
    net = build_model(seed=0)
    reg.add(net, version="cur", promote=True)
    reg.add(net, version="cand")
    reg.add(net, version="big", preprocessing=PreprocessSpec(size=512))
    return reg


def _plant(rt, n: int) -> None:  # noqa: ANN001
    """n one-image live studies, half with Effusion: the current model ranks them right, the candidate
    backwards (so the comparison is `worse` on any resample)."""
    key = rt.keys.record_key
    with rt.sessions() as s, s.begin():
        for i in range(n):
            sop, pos = f"2.25.{5000 + i}", i % 2 == 0
            inst = Instance(sop_instance_uid=sop, study_uid=f"2.25.{7000 + i}", series_uid="2.25.1",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.7", state="reported")
            s.add(inst)
            s.flush()
            eff = (0.6 if pos else 0.1) + 0.3 * i / n
            cur = {lab: (eff if lab == "Effusion" else 0.05) for lab in LABELS}
            for lab, p in cur.items():
                s.add(Prediction(instance_id=inst.id, model_version="cur", label=lab, probability=p, threshold=0.5,
                                 positive=p >= 0.5, mac=records.mac(key, sop, "cur", lab, p, 0.5, p >= 0.5)))
            shadow_rows.record(s, key, "cand", "cur", [(inst.id, sop, {**cur, "Effusion": 1 - eff})], utcnow())
            findings = "Effusion" if pos else "No Finding"
            s.add(Label(instance_id=inst.id, findings=findings, states=manual_states(findings)))


def test_summary_row_is_not_a_gauge(harness):
    """/metrics reads `gauges`: the page's summary row must never appear there."""
    from storage import monitoring as SM
    rt = harness.rt
    now = datetime.now(timezone.utc)
    watched(rt, now)
    monitoring_pass(rt, now)
    with rt.read_sessions() as s:
        assert all(metric != SM.SUMMARY_METRIC for metric, *_ in SM.gauges(s))
        summary, at = SM.last_summary(s)
    assert summary["model"] == "v1" and at is not None and json.dumps(summary)
    assert len(summary["drift"]["labels"]["Effusion"]["live_quantiles"]) == 21
