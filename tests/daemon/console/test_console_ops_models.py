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

from console_ops_harness import harness  # noqa: F401 - the fixture


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
def models(harness, network):  # noqa: F811
    reg = Registry(harness.rt.models_dir)
    reg.add(network, version="base", metrics=_metrics(0.25, 1), promote=True)
    reg.add(network, version="good", metrics=_metrics(0.35, 2))
    reg.add(network, version="weak", metrics=_metrics(0.0, 3))
    return reg


def test_history_file_name_is_the_registrys():
    from cxrmodel import registry
    assert ops_models.HISTORY == registry.HISTORY


def test_model_page_shows_the_report_with_cis_and_roc_curves(harness, models):  # noqa: F811
    ops = harness.client("otto", "operations")
    page = ops.get("/models").text
    assert 'id="current-version">base<' in page
    auroc = models.manifest("base").metrics["auroc"]["Effusion"]
    assert f'data-auroc="Effusion">{auroc:.3f}<' in page
    lo, hi = models.manifest("base").metrics["auroc_ci95"]["Effusion"]
    assert f"{lo:.3f}–{hi:.3f}" in page
    assert page.count('class="chart-series-') >= 14 and "ROC curves of base" in page
    assert "promote-form" not in page and "rollback-form" not in page  # operations only views
    weak = ops.get("/models/weak").text
    assert "does not clear it" in weak and "promote-form" not in weak
    assert ops.get("/models/nope").status_code == 404


def test_admin_promotes_only_with_the_typed_name_and_within_the_floor(harness, models):  # noqa: F811
    admin = harness.client("ada", "admin")
    form = admin.get("/models/good").text
    assert 'id="promote-form"' in form and 'name="confirm"' in form
    r = admin.post("/models/promote", data={"csrf_token": admin.csrf, "version": "good", "confirm": "goo"})
    assert r.status_code == 303 and "confirmation" in admin.get(r.headers["location"]).text
    assert models.current().version == "base" and harness.audit_rows("model.promoted") == []

    r = admin.post("/models/promote", data={"csrf_token": admin.csrf, "version": "good", "confirm": "good"})
    assert r.status_code == 303 and models.current().version == "good"
    assert "good is now the current model (was base)" in admin.get(r.headers["location"]).text
    [row] = harness.audit_rows("model.promoted")
    assert (row["actor"], row["host"], row["details"]["version"], row["details"]["previous"],
            row["details"]["via"], row["details"]["forced"]) == ("console:ada", "testclient", "good", "base",
                                                                 "console", False)

    r = admin.post("/models/promote", data={"csrf_token": admin.csrf, "version": "weak", "confirm": "weak"})
    assert models.current().version == "good"  # below the floor: refused, as `cxrd model promote weak`
    assert "not promoted" in admin.get(r.headers["location"]).text
    [rejected] = harness.audit_rows("model.rejected")
    assert (rejected["actor"], rejected["outcome"], rejected["details"]["version"]) == ("console:ada", 4, "weak")


def test_admin_rolls_back_with_the_typed_name_of_the_version_to_return_to(harness, models):  # noqa: F811
    models.promote("good")
    admin = harness.client("ada", "admin")
    page = admin.get("/models").text
    assert re.search(r"Type <code>base</code> to confirm", page)
    r = admin.post("/models/rollback", data={"csrf_token": admin.csrf, "confirm": "good"})
    assert models.current().version == "good" and harness.audit_rows("model.rollback") == []
    assert "not rolled back" in admin.get(r.headers["location"]).text
    admin.post("/models/rollback", data={"csrf_token": admin.csrf, "confirm": "base"})
    assert models.current().version == "base"
    [row] = harness.audit_rows("model.rollback")
    assert (row["actor"], row["details"]["version"], row["details"]["previous"]) == ("console:ada", "base", "good")
    history = admin.get("/models").text
    assert "console:ada" in history and "rollback" in history
