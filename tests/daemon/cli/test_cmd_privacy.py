"""`cxrd keys`, `cxrd audit verify` and `cxrd reidentify` end to end on a real state directory."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from config import load_settings
from daemon.cli import main as cli
from daemon.runtime import Runtime
from storage import reid

MODULES = ["daemon.cli.keys", "daemon.cli.audit", "daemon.cli.reidentify"]


@pytest.fixture
def cxrd(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRD_STORAGE__STATE_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setattr(cli, "COMMAND_MODULES", list(dict.fromkeys(cli.COMMAND_MODULES + MODULES)))

    def run(*argv: str) -> int:
        return cli.main(list(argv))

    assert run("init") == 0
    return run


def _rt() -> Runtime:
    return Runtime(load_settings(None))


def test_rotate_rewraps_objects_and_retire_is_refused_until_unused(cxrd, capsys):
    rt = _rt()
    for i in range(3):
        rt.vault.put(f"2.25.{i}", b"image bytes %d" % i)
    capsys.readouterr()
    assert cxrd("keys", "list", "--format", "json") == 0
    old = json.loads(capsys.readouterr().out)["keks"][0]
    assert old["primary"] and old["objects"] == 3
    assert cxrd("keys", "retire", old["id"]) == 1
    assert "primary" in capsys.readouterr().err
    assert cxrd("keys", "rotate", "--format", "json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["old_primary"] == old["id"] and out["rewrapped"] == 3
    assert cxrd("keys", "retire", old["id"]) == 0
    rt2 = _rt()
    assert [rt2.vault.get(f"2.25.{i}") for i in range(3)] == [b"image bytes %d" % i for i in range(3)]
    assert rt2.keys.uid_key == rt.keys.uid_key  # pseudonym key unchanged by rotation
    capsys.readouterr()
    assert cxrd("audit", "verify", "--format", "json") == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    with rt2.engine.connect() as conn:
        types = conn.execute(text("SELECT event_type, outcome FROM audit_events ORDER BY seq")).all()
    assert ("keys.rotated", 0) in types and ("keys.retired", 0) in types and ("keys.retired", 4) in types


def test_audit_verify_names_the_first_tampered_row(cxrd, capsys):
    for _ in range(3):
        assert cxrd("audit", "verify") == 0
    rt = _rt()
    with rt.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'os:mallory' WHERE seq = 2"))
    capsys.readouterr()
    assert cxrd("audit", "verify") == 1
    err = capsys.readouterr().err
    assert "row 2" in err and len(err.strip().splitlines()) == 1


def test_reidentify_needs_a_reason_prints_originals_and_audits(cxrd, capsys):
    rt = _rt()
    original = {"study_uid": "1.2.840.99.1", "patient_id": "MRN-PHIMARK", "patient_name": "DOE^JANE",
                "accession_number": "A77", "series_uid": "1.2.840.99.2", "sop_instance_uid": "1.2.840.99.3",
                "study_date": "20240101", "issuer_of_patient_id": ""}
    with rt.sessions.begin() as s:
        reid.store_entry(s, rt.keys.reid_key, pseudo_sop_uid="2.25.33", pseudo_study_uid="2.25.11",
                         original=original)
    capsys.readouterr()
    assert cxrd("reidentify", "--reason", " ", "--study", "2.25.11") == 2  # usage error (and still audited as reid.refused)
    assert "reason" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cxrd("reidentify", "--reason", "x", "--study", "2.25.11", "--instance", "2.25.33")
    capsys.readouterr()
    assert cxrd("reidentify", "--reason", "INC-1: results to PACS", "--study", "2.25.11", "--format", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["patient_id"] == "MRN-PHIMARK" and rows[0]["pseudo_sop_instance_uid"] == "2.25.33"
    assert cxrd("reidentify", "--reason", "INC-2", "--instance", "2.25.404") == 1
    with rt.engine.connect() as conn:
        events = conn.execute(text("SELECT event_type, outcome, details FROM audit_events "
                                   "WHERE event_type LIKE 'reid.%' ORDER BY seq")).all()
    assert [(e[0], e[1]) for e in events] == [("reid.refused", 4), ("reid.lookup", 0), ("reid.lookup", 4)]
    assert all("PHIMARK" not in e[2] and "DOE" not in e[2] for e in events)


@pytest.mark.parametrize("argv", [["keys", "--help"], ["keys", "rotate", "--help"], ["keys", "retire", "--help"],
                                  ["audit", "verify", "--help"], ["reidentify", "--help"]])
def test_every_command_has_help(monkeypatch, capsys, argv):
    monkeypatch.setattr(cli, "COMMAND_MODULES", list(dict.fromkeys(cli.COMMAND_MODULES + MODULES)))
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0 and "usage: cxrd" in capsys.readouterr().out
