"""Reports recorded by pseudonymous keys, matched to studies, labelled (manual wins), expired, purged;
and the ground truth monitoring and training read from them."""
from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from daemon.stages.report_matching import complete_states, match_once
from daemon.stages.training_data import manual_states, training_findings
from storage import db
from storage.deid import pseudonymize_uid
from storage.ground_truth import counts_by_source, ground_truth
from storage.keys import init_keys, load_keys
from storage.models import AuditEvent, Instance, Label, Report, utcnow
from storage.reports import IncomingReport, accession_key, purge_reports, record_report
from storage.vault import Vault

TEXT = "FINDINGS: The heart is enlarged. SECRETTEXT. IMPRESSION: Cardiomegaly. Cannot exclude pneumonia."


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_engine(request, tmp_path):  # noqa: ANN001, ANN201
    """The matching tests on SQLite and on PostgreSQL 15 (a fresh database per test)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("engine")
        return
    eng = db.engine_from_url(request.getfixturevalue("fresh_pg_database"))
    db.migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def store(store_engine, tmp_path):  # noqa: ANN001, ANN201
    engine = store_engine
    init_keys(tmp_path / "keys" / "master.key", tmp_path / "keys" / "keyring.json")
    keys = load_keys(tmp_path / "keys" / "master.key", tmp_path / "keys" / "keyring.json")
    return SimpleNamespace(sessions=db.sessions(engine), keys=keys, vault=Vault(tmp_path / "vault", keys.keyring))


def incoming(control: str = "C1", study: str = "1.2.3.4", accession: str = "", status: str = "F") -> IncomingReport:
    return IncomingReport(sender="RIS^H", message_type="ORU^R01", control_id=control, result_status=status,
                          study_uid=study, accession=accession, text=TEXT)


def record(store, inc: IncomingReport, keep_text: bool = True, wait_s: float = 3600):  # noqa: ANN001, ANN201
    from daemon.stages.report_matching import label_text
    return record_report(store.sessions, store.vault, store.keys, inc, label_text(inc.text),
                         keep_text=keep_text, match_wait_s=wait_s)


def add_instance(store, study_pseudonym: str, n: int, state: str = "received", accession_hash: str = "") -> list[int]:  # noqa: ANN001
    with store.sessions.begin() as s:
        rows = [Instance(sop_instance_uid=f"2.25.{i}{study_pseudonym[-6:]}{state}",
                         study_uid=study_pseudonym, series_uid="2.25.9", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                         state=state, vault_object=f"obj{i}{study_pseudonym[-6:]}{state}", accession_hash=accession_hash)
                for i in range(n)]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def truth(store):  # noqa: ANN001, ANN201
    with store.sessions() as s:
        return ground_truth(s)


def sources(store):  # noqa: ANN001, ANN201
    with store.sessions() as s:
        return counts_by_source(s)


def match(store):  # noqa: ANN001, ANN201
    return match_once(store.sessions, store.vault, store.keys.audit_key, 3600)


def test_recorded_by_pseudonymous_keys_text_encrypted_and_duplicates_once(store):
    r = record(store, incoming(accession="ACC1"))
    assert not r.duplicate and r.state == "waiting"
    assert record(store, incoming(accession="ACC1")).duplicate
    with store.sessions() as s:
        (row,) = s.scalars(select(Report)).all()
        assert row.study_uid == pseudonymize_uid(store.keys.uid_key, "1.2.3.4")
        assert row.accession_hash == accession_key(store.keys.uid_key, "ACC1")
        assert "ACC1" not in repr(vars(row)) and "1.2.3.4" not in repr(vars(row)) and "SECRET" not in repr(vars(row))
        assert json.loads(row.findings)["Cardiomegaly"] == "positive"
    raw = store.vault.path(row.text_object).read_bytes()
    assert b"SECRETTEXT" not in raw and store.vault.get(row.text_object).decode() == TEXT


def test_discard_keeps_no_text_and_non_final_reports_are_refused(store):
    assert record(store, incoming("D1"), keep_text=False).state == "waiting"
    r = record(store, incoming("P1", status="P"))
    assert r.state == "refused" and "not final" in r.reason
    assert record(store, incoming("N1", study="")).state == "refused"
    with store.sessions() as s:
        assert [row.text_object for row in s.scalars(select(Report))] == [None, None, None]
    assert not list(store.vault.object_ids())


def test_matched_by_study_or_accession_labels_analysed_images_and_manual_wins(store):
    record(store, incoming("A"))
    record(store, incoming("B", study="", accession="ACC-B"))
    study_a = pseudonymize_uid(store.keys.uid_key, "1.2.3.4")
    analysed = add_instance(store, study_a, 2)
    lateral = add_instance(store, study_a, 1, state="not_analysed")
    manual = add_instance(store, "2.25.777", 1, accession_hash=accession_key(store.keys.uid_key, "ACC-B"))
    with store.sessions.begin() as s:
        s.add(Label(instance_id=manual[0], findings="Effusion", source="manual", states=manual_states("Effusion")))
    assert match(store)["matched"] == 2
    gt = truth(store)
    assert set(gt) == {*analysed, *manual} and lateral[0] not in gt
    assert gt[analysed[0]]["Cardiomegaly"] == 1 and gt[analysed[0]]["Pneumonia"] is None
    assert gt[analysed[0]]["Effusion"] == 0 and len(gt[analysed[0]]) == 14
    assert gt[manual[0]]["Effusion"] == 1 and gt[manual[0]]["Cardiomegaly"] == 0  # manual kept
    assert sources(store) == {"manual": 1, "report": 2}
    with store.sessions() as s:
        assert {r.state for r in s.scalars(select(Report))} == {"labelled", "matched"}
        events = [e.event_type for e in s.scalars(select(AuditEvent))]
    assert events.count("report.matched") == 2 and events.count("report.labelled") == 1
    # an image of the study that arrives later gets the report's label too
    late = add_instance(store, study_a, 1, state="predicted")
    match(store)
    assert truth(store)[late[0]]["Cardiomegaly"] == 1


def test_a_corrected_report_replaces_the_earlier_reports_labels(store):
    record(store, incoming("F1"))
    study = pseudonymize_uid(store.keys.uid_key, "1.2.3.4")
    (iid,) = add_instance(store, study, 1)
    match(store)
    corrected = IncomingReport(sender="RIS^H", message_type="ORU^R01", control_id="C2", result_status="C",
                               study_uid="1.2.3.4", accession="", text="IMPRESSION: No cardiomegaly.")
    record_report(store.sessions, store.vault, store.keys, corrected, {"Cardiomegaly": "negative"},
                  keep_text=False, match_wait_s=3600)
    match(store)
    assert truth(store)[iid]["Cardiomegaly"] == 0


def test_a_report_whose_images_never_come_expires_and_its_text_is_shredded(store):
    record(store, incoming("E1"), wait_s=60)
    with store.sessions.begin() as s:
        row = s.scalars(select(Report)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        obj = row.text_object
    assert match(store)["expired"] == 1
    assert not store.vault.exists(obj)
    with store.sessions() as s:
        row = s.scalars(select(Report)).one()
        assert (row.state, row.text_object) == ("expired", None)
        assert "report.expired" in [e.event_type for e in s.scalars(select(AuditEvent))]


def test_purge_shreds_old_report_texts_and_those_of_purged_studies(store):
    record(store, incoming("OLD"))
    record(store, incoming("NEW", study="1.2.3.5"))
    study = pseudonymize_uid(store.keys.uid_key, "1.2.3.5")
    (iid,) = add_instance(store, study, 1)
    match(store)
    assert purge_reports(store.sessions, store.vault, store.keys.audit_key, utcnow() - timedelta(days=1)) == 0
    with store.sessions.begin() as s:
        s.get(Instance, iid).vault_object = None  # its study's images were purged
    assert purge_reports(store.sessions, store.vault, store.keys.audit_key, utcnow() - timedelta(days=1)) == 1
    assert purge_reports(store.sessions, store.vault, store.keys.audit_key, utcnow() + timedelta(days=1)) == 1
    assert not list(store.vault.object_ids())
    with store.sessions() as s:
        assert [e.event_type for e in s.scalars(select(AuditEvent))].count("report.purged") == 2


@pytest.mark.parametrize("policy, expected", [("negative", "Cardiomegaly"), ("positive", "Cardiomegaly|Pneumonia"),
                                              ("exclude", None)])
def test_uncertain_findings_train_as_the_setting_says(policy, expected):
    states = complete_states({"Cardiomegaly": "positive", "Pneumonia": "uncertain"})
    label = Label(findings="Cardiomegaly", source="report", states=json.dumps(states))
    assert training_findings(label, policy) == expected
    manual = Label(findings="Effusion", source="manual", states=manual_states("Effusion"))
    assert training_findings(manual, policy) == "Effusion"


def test_a_manual_import_replaces_a_report_label_and_labels_list_counts_by_source(cli_state, cli_captured):
    from sqlalchemy import create_engine
    engine = create_engine(f"sqlite:///{cli_state / 'cxrd.db'}")
    with db.sessions(engine).begin() as s:
        for i, uid in enumerate(("2.25.11", "2.25.12"), start=1):
            s.add(Instance(id=i, sop_instance_uid=uid, study_uid="2.25.1", series_uid="2.25.2",
                           sop_class_uid="1.2", state="predicted", vault_object=f"o{i}"))
        s.flush()
        for i in (1, 2):
            s.add(Label(instance_id=i, findings="Cardiomegaly", source="report", report_id=1,
                        states=json.dumps(complete_states({"Cardiomegaly": "positive"}))))
    (cli_state.parent / "labels.csv").write_text("Image Index,Finding Labels\n2.25.11.png,Effusion\n")
    code, out, err = cli_captured("labels", "import", str(cli_state.parent / "labels.csv"))
    assert code == 0 and "1 replaced" in out, out + err
    with db.sessions(engine)() as s:
        manual, report = s.get(Label, 1), s.get(Label, 2)
        assert (manual.source, manual.findings, manual.report_id) == ("manual", "Effusion", None)
        assert json.loads(manual.states)["Cardiomegaly"] == "negative" and report.source == "report"
    code, out, _ = cli_captured("labels", "list", "--format", "json")
    counts = json.loads(out)
    assert counts["labels"] == {"manual": 1, "report": 1} and counts["reports"]["waiting"] == 0
    engine.dispose()


def test_reports_whose_images_never_come_do_not_crowd_out_one_whose_images_have(store):  # noqa: ANN001
    """Waiting reports are chosen in SQL by whether their images exist, so a RIS sending reports for
    studies cxrd never receives (CT, MR) cannot fill the pass's limit ahead of a chest report."""
    from storage.reports import candidates
    for i in range(5):
        record(store, incoming(control=f"CT{i}", study=f"1.2.3.9{i}"))
    record(store, incoming(control="CHEST", study="1.2.3.77"))
    arrived = pseudonymize_uid(store.keys.uid_key, "1.2.3.77")
    add_instance(store, arrived, 1)
    with store.sessions() as s:
        chest = s.scalar(select(Report.id).where(Report.study_uid == arrived))
        assert candidates(s, utcnow(), 3600, limit=2) == [chest]
    assert match_once(store.sessions, store.vault, store.keys.audit_key, 3600)["matched"] == 1
