"""Scheduled retraining with `model.shadow.after_retrain`: a candidate that would have been promoted
runs in shadow instead (outcome `shadowed`, audited), the current model stays, and the next run
starts by deciding on that shadow from the live labeled studies (none yet: it waits)."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from daemon.stages.retraining import retrain_once
from storage.models import AuditEvent, RetrainRun
from test_retraining import make_runtime

pytestmark = pytest.mark.slow


def test_a_retrained_candidate_goes_into_shadow_instead_of_becoming_current(tmp_path, chestxray14_set):
    rt = make_runtime(tmp_path, CXRD_MODEL__SHADOW__AFTER_RETRAIN="true")
    inbox = Path(rt.settings.retrain.inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    chestxray14_set(inbox / "2026-11-01", 0, 120, "learnable")
    first = retrain_once(rt, "manual")
    assert first["outcome"] == "promoted", first  # no current model yet: nothing to run beside
    chestxray14_set(inbox / "2026-11-02", 120, 120, "learnable")
    second = retrain_once(rt, "schedule")
    assert second["outcome"] == "shadowed", second
    assert rt.registry.current_version() == first["candidate"]
    pointer = rt.registry.shadow()
    assert pointer["version"] == second["candidate"] and pointer["origin"].startswith("retrain:")
    assert second["shadow"]["running"] and second["shadow"]["beside"] == first["candidate"]
    third = retrain_once(rt, "schedule")  # no new data; the shadow has no live labeled study yet
    assert third["outcome"] == "skipped"
    assert third["shadow_decision"]["outcome"] == "waiting" and third["shadow_decision"]["studies"] == 0
    with rt.read_sessions() as s:
        outcomes = list(s.scalars(select(RetrainRun.outcome).order_by(RetrainRun.id)))
        audited = set(s.scalars(select(AuditEvent.event_type)))
    assert outcomes == ["promoted", "shadowed", "skipped"] and "model.shadowed" in audited
