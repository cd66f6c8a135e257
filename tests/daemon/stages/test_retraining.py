"""Retraining from an inbox of ChestX-ray14 batches (real NIH images, tiny settings for speed):
train in a child process, judge against the current model on the same patients, promote or keep,
skip when there is too little new data, fail safely; every run recorded and audited."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from config import load_settings
from daemon.cli.service import initialise
from daemon.runtime import Runtime
from daemon.stages.retraining import retrain_once
from storage.models import AuditEvent, RetrainRun

pytestmark = pytest.mark.slow


def make_batch(shared_data: Path, inbox: Path, name: str, start: int, count: int) -> Path:
    """A batch in NIH's own format: a slice of the real CSV, images linked (never copied)."""
    src = shared_data / "nih"
    d = inbox / name
    (d / "images").mkdir(parents=True)
    with open(src / "Data_Entry_2017.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(d / "Data_Entry_2017.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        for row in rows[1 + start: 1 + start + count]:
            w.writerow(row)
            (d / "images" / row[0]).symlink_to(src / "images" / row[0])
    return d


@pytest.fixture()
def rt(tmp_path) -> Runtime:
    env = {"CXRD_STORAGE__STATE_DIR": str(tmp_path / "state"), "CXRD_RETRAIN__MIN_NEW_IMAGES": "80",
           "CXRD_RETRAIN__SIZE": "64", "CXRD_RETRAIN__EPOCHS": "3", "CXRD_RETRAIN__VIEWS": "1",
           "CXRD_RETRAIN__THREADS": "2", "CXRD_RETRAIN__NICE": "0"}
    runtime = Runtime(load_settings(None, env=env))
    initialise(runtime)
    return runtime


def events(rt: Runtime) -> list[str]:
    with rt.read_sessions() as s:
        return list(s.scalars(select(AuditEvent.event_type).order_by(AuditEvent.seq)))


def test_skip_promote_then_judge_a_candidate_against_the_current_model(rt, shared_data):
    inbox = Path(rt.settings.retrain.inbox)
    make_batch(shared_data, inbox, "2026-11-01", 0, 40)
    first = retrain_once(rt, "manual")
    assert first["outcome"] == "skipped" and "40 new labeled images" in first["reason"]
    assert rt.registry.current() is None

    make_batch(shared_data, inbox, "2026-11-02", 40, 120)
    second = retrain_once(rt, "manual")
    assert second["outcome"] == "promoted", second
    assert rt.registry.current().version == second["candidate"]
    manifest = rt.registry.manifest(second["candidate"])
    assert set(manifest.thresholds) and manifest.metrics
    assert "model.trained" in events(rt) and "model.promoted" in events(rt)

    assert retrain_once(rt, "manual")["outcome"] == "skipped"  # nothing new since

    make_batch(shared_data, inbox, "2026-11-03", 160, 100)
    third = retrain_once(rt, "schedule")
    assert third["outcome"] in ("promoted", "rejected")
    assert third["previous"] == second["candidate"]
    assert third["current_mean_auroc"] is not None  # both judged on the same held-out patients
    expected_current = third["candidate"] if third["outcome"] == "promoted" else second["candidate"]
    assert rt.registry.current().version == expected_current
    assert f"model.{third['outcome']}" in events(rt)
    with rt.read_sessions() as s:
        runs = [(r.trigger, r.outcome) for r in s.scalars(select(RetrainRun).order_by(RetrainRun.id))]
    assert runs[0] == ("manual", "skipped") and runs[1] == ("manual", "promoted") and runs[3][0] == "schedule"


def test_a_failing_run_is_recorded_and_leaves_the_current_model_alone(rt, shared_data):
    inbox = Path(rt.settings.retrain.inbox)
    bad = make_batch(shared_data, inbox, "broken", 0, 100)
    for img in (bad / "images").iterdir():  # every image missing: the reader reports each row
        img.unlink()
    summary = retrain_once(rt, "manual")
    assert summary["outcome"] == "failed" and summary["error"]
    assert rt.registry.current() is None
    with rt.read_sessions() as s:
        run = s.scalars(select(RetrainRun)).one()
    assert run.outcome == "failed" and json.loads(run.report)["error"]
