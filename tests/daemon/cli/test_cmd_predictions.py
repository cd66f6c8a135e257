"""`cxrd predictions --since`: the same times as the audit commands (dates, date-times, today, yesterday)."""
from __future__ import annotations

import json
from datetime import datetime, time, timedelta

import pytest
from sqlalchemy import func, select

from config import load_settings
from daemon.cli import main as cli
from daemon.runtime import Runtime
from storage.models import AuditEvent, Instance, Prediction


@pytest.fixture
def rt(tmp_path, monkeypatch) -> Runtime:
    """A state dir with one instance predicted three days ago, one yesterday at noon and one now."""
    monkeypatch.setenv("CXRD_STORAGE__STATE_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init"]) == 0
    runtime = Runtime(load_settings(None))
    now = datetime.now().astimezone()
    noon = datetime.combine(now.date(), time(12)).astimezone()
    made = {"older": noon - timedelta(days=3), "yesterday": noon - timedelta(days=1), "now": now}
    with runtime.sessions.begin() as s:
        for n, (name, at) in enumerate(made.items(), start=1):
            inst = Instance(sop_instance_uid=f"2.25.{n}0", study_uid=f"2.25.{n}", series_uid=f"2.25.{n}1",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", state="predicted")
            s.add(inst)
            s.flush()
            s.add(Prediction(instance_id=inst.id, model_version="m1", label="Effusion", probability=0.7,
                             threshold=0.5, positive=True, created_at=at))
    return runtime


def _studies(capsys, *args: str) -> set[str]:
    capsys.readouterr()
    assert cli.main(["predictions", "--format", "json", *args]) == 0
    return {r["study_uid"] for r in json.loads(capsys.readouterr().out)}


def _audit_rows(rt: Runtime) -> int:
    with rt.read_sessions() as s:
        return s.scalar(select(func.count()).select_from(AuditEvent))


def test_since_today_and_yesterday_mean_local_midnight(rt, capsys):
    assert _studies(capsys, "--since", "yesterday") == {"2.25.2", "2.25.3"}
    assert _studies(capsys, "--since", "today") == {"2.25.3"}
    assert _studies(capsys) == {"2.25.1", "2.25.2", "2.25.3"}


def test_since_takes_a_local_date_and_an_iso_date_time(rt, capsys):
    two_days_ago = (datetime.now() - timedelta(days=2)).date().isoformat()
    assert _studies(capsys, "--since", two_days_ago) == {"2.25.2", "2.25.3"}
    in_a_minute = (datetime.now().astimezone() + timedelta(minutes=1)).isoformat(timespec="seconds")
    assert _studies(capsys, "--since", in_a_minute) == set()


def test_the_query_is_audited_with_the_instant_it_used(rt, capsys):
    _studies(capsys, "--since", "today")
    with rt.read_sessions() as s:
        last = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).one()
    midnight = datetime.combine(datetime.now().date(), time()).astimezone()
    assert last.event_type == "predictions.query"
    assert datetime.fromisoformat(json.loads(last.details)["since"]) == midnight


@pytest.mark.parametrize("argv", [["predictions", "--since", "yesterday-ish"],
                                  ["audit", "query", "--since", "yesterday-ish"]], ids=["predictions", "audit"])
def test_an_unreadable_time_is_the_same_usage_error_everywhere(rt, capsys, argv):
    before = _audit_rows(rt)
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrd: error: --since: cannot read time 'yesterday-ish': use ISO 8601")
    assert err.count("\n") == 1 and "now/today/yesterday" in err
    assert _audit_rows(rt) == before
