"""Retraining from an inbox of ChestX-ray14 batches (real NIH images, tiny settings for speed):
train in a child process, judge against the promotion floor and the current model on the same
patients, promote or keep, skip when there is too little new data, fail safely; every run recorded
and audited. Batches that must yield a promotable model carry a learnable finding (chestxray14_set):
tiny models on a few hundred real NIH labels cannot be shown better than chance, and are refused."""
from __future__ import annotations

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


@pytest.fixture()
def make_batch(chestxray14_set):
    """A batch in NIH's own format in the inbox: real NIH rows; "learnable" ones carry a finding any
    model that learns can be shown to beat chance on (see chestxray14_set), "shuffled" ones nothing."""
    def make(inbox: Path, name: str, start: int, count: int, kind: str = "learnable") -> Path:
        inbox.mkdir(parents=True, exist_ok=True)
        return chestxray14_set(inbox / name, start, count, kind)
    return make


def make_runtime(tmp_path: Path, **extra: str) -> Runtime:
    env = {"CXRD_STORAGE__STATE_DIR": str(tmp_path / "state"), "CXRD_RETRAIN__MIN_NEW_IMAGES": "80",
           "CXRD_RETRAIN__SIZE": "64", "CXRD_RETRAIN__EPOCHS": "3", "CXRD_RETRAIN__VIEWS": "1",
           "CXRD_RETRAIN__THREADS": "2", "CXRD_RETRAIN__NICE": "0", **extra}
    runtime = Runtime(load_settings(None, env=env))
    initialise(runtime)
    return runtime


@pytest.fixture()
def rt(tmp_path) -> Runtime:
    return make_runtime(tmp_path)


def events(rt: Runtime) -> list[str]:
    with rt.read_sessions() as s:
        return list(s.scalars(select(AuditEvent.event_type).order_by(AuditEvent.seq)))


def test_skip_promote_then_judge_a_candidate_against_the_current_model(rt, make_batch):
    inbox = Path(rt.settings.retrain.inbox)
    make_batch(inbox, "2026-11-01", 0, 40)
    first = retrain_once(rt, "manual")
    assert first["outcome"] == "skipped" and "40 new labeled images" in first["reason"]
    assert rt.registry.current() is None

    make_batch(inbox, "2026-11-02", 40, 120)
    second = retrain_once(rt, "manual")
    assert second["outcome"] == "promoted", second
    assert second["promotion"]["passed"] and second["promotion"]["mean_auroc_ci95"][0] > 0.5
    assert rt.registry.current().version == second["candidate"]
    manifest = rt.registry.manifest(second["candidate"])
    assert set(manifest.thresholds) and manifest.metrics
    # the drift reference of its held-out test images (daemon.stages.monitoring compares traffic with it)
    reference = manifest.metrics["reference"]
    assert reference["source"] == "test" and reference["scores"]["Effusion"]["n"] == reference["n_images"] > 0
    assert reference["inputs"]["unit_mean"]["n"] == reference["n_images"]
    assert "model.trained" in events(rt) and "model.promoted" in events(rt)

    assert retrain_once(rt, "manual")["outcome"] == "skipped"  # nothing new since

    make_batch(inbox, "2026-11-03", 160, 100)
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


def test_a_failing_run_is_recorded_and_leaves_the_current_model_alone(rt, make_batch):
    inbox = Path(rt.settings.retrain.inbox)
    bad = make_batch(inbox, "broken", 0, 100, "real")
    for img in (bad / "images").iterdir():  # every image missing: the reader reports each row
        img.unlink()
    summary = retrain_once(rt, "manual")
    assert summary["outcome"] == "failed" and summary["error"]
    assert rt.registry.current() is None
    with rt.read_sessions() as s:
        run = s.scalars(select(RetrainRun)).one()
    assert run.outcome == "failed" and json.loads(run.report)["error"]


def test_a_chance_level_first_model_is_rejected_not_made_current(tmp_path, make_batch):
    """Real images with their findings dealt to the wrong images: the first model, with no model
    current to compare with, is still kept unpromoted, because it cannot be shown better than
    chance. Findings with 3 positives are judged so the refusal is the mean AUROC's lower bound."""
    rt = make_runtime(tmp_path, CXRD_MODEL__PROMOTION__MIN_POSITIVES="3")
    make_batch(Path(rt.settings.retrain.inbox), "2026-11-05", 0, 120, "shuffled")
    summary = retrain_once(rt, "manual")
    assert summary["outcome"] == "rejected", summary
    assert "min_auroc_lower_bound" in summary["reasons"][0] and "no current model" in " ".join(summary["reasons"])
    assert rt.registry.current() is None and rt.registry.list()[0].version == summary["candidate"]
    with rt.read_sessions() as s:
        rejected = s.scalars(select(AuditEvent.details).where(AuditEvent.event_type == "model.rejected")).one()
    assert "min_auroc_lower_bound" in json.loads(rejected)["reasons"][0]
