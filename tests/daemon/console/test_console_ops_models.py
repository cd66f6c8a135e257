"""Model pages in-process: the evaluation report with ROC curves, and promote/rollback by an admin
with a typed confirmation, through the code path and floor of `cxrd model promote|rollback`."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from cxrmodel import evaluate as E
from cxrmodel.labels import LABELS
from cxrmodel.network import ArchSpec, build
from cxrmodel.promotion import Floor, with_evidence
from cxrmodel.registry import Registry
from daemon.console import ops_models

from console_ops_harness import Harness


@pytest.fixture()
def harness(console_client) -> Harness:  # noqa: ANN001
    return Harness(console_client)


def _metrics(separation: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    Y = (rng.random((200, len(LABELS))) < 0.3).astype(np.float32)
    P = np.clip(0.5 + (Y - 0.5) * separation + rng.normal(0, 0.2, Y.shape), 0, 1)
    return with_evidence(E.manifest_metrics(E.report(Y, P, n_boot=50), "test split"), Y, P, Floor(), n_boot=50)


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return build(ArchSpec(), seed=0)


@pytest.fixture()
def models(harness, network):
    reg = Registry(harness.rt.models_dir)
    reg.add(network, version="base", metrics=_metrics(0.25, 1), promote=True)
    reg.add(network, version="good", metrics=_metrics(0.35, 2))
    reg.add(network, version="weak", metrics=_metrics(0.0, 3))
    return reg


def test_history_file_name_is_the_registrys():
    from cxrmodel import registry
    assert ops_models.HISTORY == registry.HISTORY


def test_model_page_shows_the_report_with_cis_and_roc_curves(harness, models):
    ops = harness.client("otto", "operations")
    page = ops.http.get("/models").text
    assert 'id="current-version">base<' in page
    auroc = models.manifest("base").metrics["auroc"]["Effusion"]
    assert f'data-auroc="Effusion">{auroc:.3f}<' in page
    lo, hi = models.manifest("base").metrics["auroc_ci95"]["Effusion"]
    assert f"{lo:.3f}–{hi:.3f}" in page
    assert page.count('class="chart-series-') >= 14 and "ROC curves of base" in page
    assert "promote-form" not in page and "rollback-form" not in page  # operations only views
    weak = ops.http.get("/models/weak").text
    assert "does not clear it" in weak and "promote-form" not in weak
    assert ops.http.get("/models/nope").status_code == 404


def test_admin_promotes_only_with_the_typed_name_and_within_the_floor(harness, models):
    admin = harness.client("ada", "admin")
    form = admin.http.get("/models/good").text
    assert 'id="promote-form"' in form and 'name="confirm"' in form
    r = admin.http.post("/models/promote", data={"csrf_token": admin.csrf_token, "version": "good", "confirm": "goo"})
    assert r.status_code == 303 and "confirmation" in admin.http.get(r.headers["location"]).text
    assert models.current().version == "base" and harness.audit_rows("model.promoted") == []

    r = admin.http.post("/models/promote", data={"csrf_token": admin.csrf_token, "version": "good", "confirm": "good"})
    assert r.status_code == 303 and models.current().version == "good"
    assert "good is now the current model (was base)" in admin.http.get(r.headers["location"]).text
    [row] = harness.audit_rows("model.promoted")
    assert (row["actor"], row["host"], row["details"]["version"], row["details"]["previous"],
            row["details"]["via"], row["details"]["forced"]) == ("console:ada", "10.9.8.7", "good", "base",
                                                                 "console", False)

    r = admin.http.post("/models/promote", data={"csrf_token": admin.csrf_token, "version": "weak", "confirm": "weak"})
    assert models.current().version == "good"  # below the floor: refused, as `cxrd model promote weak`
    assert "not promoted" in admin.http.get(r.headers["location"]).text
    [rejected] = harness.audit_rows("model.rejected")
    assert (rejected["actor"], rejected["outcome"], rejected["details"]["version"]) == ("console:ada", 4, "weak")


def test_admin_rolls_back_with_the_typed_name_of_the_version_to_return_to(harness, models):
    models.promote("good")
    admin = harness.client("ada", "admin")
    page = admin.http.get("/models").text
    assert re.search(r"Type <code>base</code> to confirm", page)
    r = admin.http.post("/models/rollback", data={"csrf_token": admin.csrf_token, "confirm": "good"})
    assert models.current().version == "good" and harness.audit_rows("model.rollback") == []
    assert "not rolled back" in admin.http.get(r.headers["location"]).text
    admin.http.post("/models/rollback", data={"csrf_token": admin.csrf_token, "confirm": "base"})
    assert models.current().version == "base"
    [row] = harness.audit_rows("model.rollback")
    assert (row["actor"], row["details"]["version"], row["details"]["previous"]) == ("console:ada", "base", "good")
    history = admin.http.get("/models").text
    assert "console:ada" in history and "rollback" in history


def test_retraining_runs_show_outcome_and_why(harness):
    import json as _json

    from storage.models import RetrainRun
    with harness.rt.sessions.begin() as s:
        s.add(RetrainRun(trigger="schedule", outcome="rejected", candidate_version="cand7",
                         report=_json.dumps({"new_images": 120, "candidate_mean_auroc": 0.71, "current_mean_auroc": 0.74,
                                             "reasons": ["mean AUROC 0.7100 is below the current model's 0.7400"]})))
        s.add(RetrainRun(trigger="manual", outcome="skipped", report=_json.dumps({"reason": "3 new labeled images (< 100)"})))
        s.add(RetrainRun(trigger="schedule", outcome="failed", report="not json"))  # a damaged report: shown, not raised
    page = harness.client("otto", "operations").http.get("/models").text
    runs = page[page.index('id="runs-table"'):]
    assert "below the current model&#39;s 0.7400" in runs and "0.710 / 0.740" in runs and ">120<" in runs
    assert "3 new labeled images (&lt; 100)" in runs and "outcome-failed" in runs
