"""`cxrd predictions`: the same times and `--study`/`--reason` contract as the audit commands, the newest
instances listed oldest first, `positive` as a list, and every row's MAC checked before it is shown."""
from __future__ import annotations

import json
from datetime import datetime, time, timedelta

import pytest
from sqlalchemy import func, select, text

from config import load_settings
from daemon.cli import main as cli
from daemon.runtime import Runtime
from storage import records
from storage.deid import pseudonymize_uid
from storage.models import AuditEvent, Instance, Prediction

ORIGINAL_STUDY = "1.2.826.0.1.3680043.8.498.1234567"


@pytest.fixture
def rt(cli_state) -> Runtime:
    """A state dir with one instance predicted three days ago, one yesterday at noon and one now."""
    runtime = Runtime(load_settings(None))
    now = datetime.now().astimezone()
    noon = datetime.combine(now.date(), time(12)).astimezone()
    made = {"older": noon - timedelta(days=3), "yesterday": noon - timedelta(days=1), "now": now}
    studies = {1: "2.25.1", 2: "2.25.2", 3: pseudonymize_uid(runtime.keys.uid_key, ORIGINAL_STUDY)}
    with runtime.sessions.begin() as s:
        for n, (name, at) in enumerate(made.items(), start=1):
            inst = Instance(sop_instance_uid=f"2.25.{n}0", study_uid=studies[n], series_uid=f"2.25.{n}1",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", state="predicted")
            s.add(inst)
            s.flush()
            for label, prob in (("Effusion", 0.7), ("Atelectasis", 0.2 + n / 10), ("Mass", 0.1)):
                pos = prob >= 0.5
                s.add(Prediction(instance_id=inst.id, model_version="m1", label=label, probability=prob,
                                 threshold=0.5, positive=pos, created_at=at,
                                 mac=records.mac(runtime.keys.record_key, inst.sop_instance_uid, "m1", label,
                                                 prob, 0.5, pos)))
    return runtime


def _studies(capsys, *args: str) -> set[str]:
    capsys.readouterr()
    assert cli.main(["predictions", "--format", "json", *args]) == 0
    return {r["study_uid"] for r in json.loads(capsys.readouterr().out)}


def _audit_rows(rt: Runtime) -> int:
    with rt.read_sessions() as s:
        return s.scalar(select(func.count()).select_from(AuditEvent))


def _third(rt: Runtime) -> str:
    return pseudonymize_uid(rt.keys.uid_key, ORIGINAL_STUDY)


def test_since_today_and_yesterday_mean_local_midnight(rt, capsys):
    assert _studies(capsys, "--since", "yesterday") == {"2.25.2", _third(rt)}
    assert _studies(capsys, "--since", "today") == {_third(rt)}
    assert _studies(capsys) == {"2.25.1", "2.25.2", _third(rt)}


def test_since_takes_a_local_date_and_an_iso_date_time(rt, capsys):
    two_days_ago = (datetime.now() - timedelta(days=2)).date().isoformat()
    assert _studies(capsys, "--since", two_days_ago) == {"2.25.2", _third(rt)}
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


def _json(capsys, *args: str) -> list[dict]:
    capsys.readouterr()
    assert cli.main(["predictions", "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_newest_instances_are_listed_oldest_first(rt, capsys):
    assert [r["instance_uid"] for r in _json(capsys)] == ["2.25.10", "2.25.20", "2.25.30"]
    assert [r["instance_uid"] for r in _json(capsys, "--limit", "2")] == ["2.25.20", "2.25.30"]
    capsys.readouterr()
    assert cli.main(["predictions", "--limit", "2"]) == 0
    table = capsys.readouterr().out
    instances = [line.split()[1] for line in table.splitlines() if line.strip().startswith("instance ")]
    assert instances == ["2.25.20", "2.25.30"]  # (a random study UID may begin with 2.25.10)


def test_positive_is_the_list_of_findings_called_positive_as_in_predict(rt, capsys):
    by_instance = {r["instance_uid"]: r for r in _json(capsys)}
    assert by_instance["2.25.10"]["positive"] == ["Effusion"]  # Atelectasis 0.3: negative
    assert by_instance["2.25.30"]["positive"] == ["Atelectasis", "Effusion"]  # in LABELS order
    assert by_instance["2.25.30"]["probabilities"] == {"Effusion": 0.7, "Atelectasis": 0.5, "Mass": 0.1}
    assert all(r["authentic"] for r in by_instance.values())


def _events(rt: Runtime, after: int = 0) -> list[tuple[str, str, dict]]:
    with rt.read_sessions() as s:
        rows = s.execute(select(AuditEvent.event_type, AuditEvent.study_uid, AuditEvent.details)
                         .where(AuditEvent.seq > after).order_by(AuditEvent.seq)).all()
    return [(e, st, json.loads(d)) for e, st, d in rows]


def _head(rt: Runtime) -> int:
    with rt.read_sessions() as s:
        return s.scalar(select(func.max(AuditEvent.seq)))


def test_an_original_study_uid_needs_a_reason_and_its_use_is_audited_as_in_audit_query(rt, capsys):
    before = _head(rt)
    capsys.readouterr()
    assert cli.main(["predictions", "--study", ORIGINAL_STUDY]) == 2
    assert "add --reason" in capsys.readouterr().err and _head(rt) == before
    records_ = _json(capsys, "--study", ORIGINAL_STUDY, "--reason", "INC-4711 clinician asks")
    assert [r["study_uid"] for r in records_] == [_third(rt)]
    used = _events(rt, before)
    assert [(e, st) for e, st, _ in used] == [("reid.pseudonymize", _third(rt)), ("predictions.query", _third(rt))]
    assert used[0][2] == {"reason": "INC-4711 clinician asks", "via": "predictions.query"}
    assert used[1][2]["study_given_as"] == "original"
    # the very same words and the very same record in `audit query`
    mark = _head(rt)
    assert cli.main(["audit", "query", "--study", ORIGINAL_STUDY, "--reason", "INC-4711 clinician asks"]) == 0
    again = _events(rt, mark)
    assert [(e, st) for e, st, _ in again] == [("reid.pseudonymize", _third(rt)), ("audit.query", _third(rt))]
    assert again[0][2] == {"reason": "INC-4711 clinician asks", "via": "audit.query"}
    # the pseudonym needs no reason; and nothing original is stored anywhere
    assert [r["instance_uid"] for r in _json(capsys, "--study", _third(rt))] == ["2.25.30"]
    assert ORIGINAL_STUDY not in json.dumps(_events(rt))


def test_a_prediction_row_edited_in_the_database_is_flagged_withheld_and_audited(rt, capsys):
    with rt.engine.begin() as conn:  # someone with database access turns a negative into a positive
        conn.execute(text("UPDATE predictions SET probability = 0.95, positive = 1 WHERE label = 'Mass' "
                          "AND instance_id = (SELECT id FROM instances WHERE sop_instance_uid = '2.25.20')"))
    before = _head(rt)
    capsys.readouterr()
    assert cli.main(["predictions", "--format", "json"]) == 0
    captured = capsys.readouterr()
    by_instance = {r["instance_uid"]: r for r in json.loads(captured.out)}
    assert by_instance["2.25.20"]["authentic"] is False
    assert by_instance["2.25.20"]["probabilities"] is None and by_instance["2.25.20"]["positive"] is None
    assert "0.95" not in captured.out and by_instance["2.25.10"]["authentic"] is True
    assert "1 instance(s) failed authentication" in captured.err
    alerts = [(e, st, d) for e, st, d in _events(rt, before) if e == "security.tamper"]
    assert len(alerts) == 1 and alerts[0][1] == "2.25.2" and alerts[0][2]["what"] == "predictions"
    with rt.read_sessions() as s:
        alert = s.scalars(select(AuditEvent).where(AuditEvent.event_type == "security.tamper")).one()
    assert alert.outcome == 12 and alert.object_uid == "2.25.20"
    capsys.readouterr()
    assert cli.main(["predictions"]) == 0
    table = capsys.readouterr().out
    assert "FAILED AUTHENTICATION" in table and "Mass 0.95" not in table
    assert cli.main(["predictions", "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    forged = next(line for line in rows if line.startswith("2.25.20,"))
    assert ",0," in forged and "0.95" not in forged


def test_results_list_shows_the_newest_oldest_first_and_retry_is_audited(rt, capsys):
    from storage.models import Result
    with rt.sessions.begin() as s:
        for n in (1, 2, 3):
            s.add(Result(study_uid=f"2.25.{n}", model_version="m1", kind="sr", state="failed"))
    capsys.readouterr()
    assert cli.main(["results", "list", "--format", "json", "--limit", "2"]) == 0
    assert [r["study_uid"] for r in json.loads(capsys.readouterr().out)] == ["2.25.2", "2.25.3"]
    before = _head(rt)
    assert cli.main(["results", "retry", "--study", "2.25.2", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"requeued": 1}
    [(event, study, details)] = _events(rt, before)
    assert (event, study, details) == ("results.retry", "2.25.2", {"requeued": 1})


def test_results_list_names_each_sent_report_and_what_replaced_it(rt, capsys):
    """A study's report is replaced, not duplicated, when images arrive after it was sent; the
    listing shows which report object superseded which, so IT can answer a PACS administrator."""
    from storage.models import Result, SentReport
    with rt.sessions.begin() as s:
        result = Result(study_uid="2.25.7", model_version="m1", kind="sr", state="sent")
        s.add(result)
        s.flush()
        first = SentReport(result_id=result.id, sop_instance_uid="2.25.71", analysed=1, not_analysed=1)
        s.add(first)
        s.flush()
        second = SentReport(result_id=result.id, sop_instance_uid="2.25.72", analysed=2, not_analysed=1)
        s.add(second)
        s.flush()
        first.superseded_by = second.id
    capsys.readouterr()
    assert cli.main(["results", "list", "--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert [(r["sop_instance_uid"], r["analysed"], r["superseded_by"]) for r in row["reports"]] == [
        ("2.25.71", 1, "2.25.72"), ("2.25.72", 2, None)]
    assert cli.main(["results", "list"]) == 0
    table = capsys.readouterr().out
    assert "report 2.25.71" in table and "superseded by 2.25.72" in table
    assert "report 2.25.72" in table and table.count("superseded by") == 1
