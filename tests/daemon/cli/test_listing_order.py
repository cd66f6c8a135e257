"""Every listing is oldest first (README "Commands"): one test per listing command not covered in
its own command's tests (predictions and results list: test_cmd_predictions; audit query:
test_cmd_audit)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from config import load_settings
from daemon.cli import main as cli
from daemon.runtime import Runtime


@pytest.fixture
def rt(cli_state) -> Runtime:
    return Runtime(load_settings(None))


def _json(capsys, *argv: str):  # noqa: ANN202
    capsys.readouterr()
    assert cli.main([*argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_retrain_runs_are_listed_oldest_first(rt, capsys):
    from storage.models import RetrainRun
    start = datetime.now(timezone.utc) - timedelta(days=3)
    with rt.sessions.begin() as s:
        for n, outcome in enumerate(("rejected", "promoted", "skipped")):
            s.add(RetrainRun(started_at=start + timedelta(days=n), trigger="schedule", outcome=outcome))
    assert [r["outcome"] for r in _json(capsys, "retrain", "--list")] == ["rejected", "promoted", "skipped"]


def test_keys_are_listed_oldest_first(rt, capsys):
    first = _json(capsys, "keys", "list")["keks"]
    assert cli.main(["keys", "rotate"]) == 0
    keks = _json(capsys, "keys", "list")["keks"]
    assert len(keks) == 2 and keks[0]["id"] == first[0]["id"] and keks[1]["primary"]


def test_models_are_listed_oldest_first(rt, capsys):
    from cxrmodel.network import build_model
    versions = [rt.registry.add(build_model(seed=n), version=f"v{n}", promote=n == 1) for n in (1, 2)]
    assert [m["version"] for m in _json(capsys, "model", "list")] == versions
