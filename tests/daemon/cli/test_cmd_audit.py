"""The compliance walk-through of docs/compliance.md, run command by command against a real state dir.

The commands are read out of the document itself, so the doc and the behaviour cannot drift apart.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from datetime import datetime, time, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import text

from config import load_settings
from daemon.cli import main as cli
from daemon.runtime import Runtime
from storage import audit, audit_export
from storage.deid import pseudonymize_uid

RUNBOOK = Path(__file__).resolve().parents[3] / "docs" / "compliance.md"
PSEUDO_STUDY = "2.25.314159265358979323846264338327950288"
ORIGINAL_STUDY = "1.2.826.0.1.3680043.8.498.1234567"


def doc_commands() -> list[str]:
    """Every `cxrd ...` line inside a fenced code block of the compliance runbook."""
    section = RUNBOOK.read_text()
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip().startswith("cxrd ")]


def step(fragment: str) -> list[str]:
    """The one documented command containing `fragment`, as argv (without the leading `cxrd`)."""
    found = [c for c in doc_commands() if fragment in c]
    assert len(found) == 1, f"docs/compliance.md should show exactly one command with {fragment!r}: {found}"
    return shlex.split(found[0])[1:]


def local(d: datetime, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(d.date(), time(hour, minute)).astimezone()


@pytest.fixture
def state(tmp_path, monkeypatch):
    """A state dir with a realistic spread of events over October, yesterday and today."""
    monkeypatch.setenv("CXRD_STORAGE__STATE_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init"]) == 0
    rt = Runtime(load_settings(None))
    key = rt.keys.audit_key
    original_pseudo = pseudonymize_uid(rt.keys.uid_key, ORIGINAL_STUDY)
    now = datetime.now().astimezone()
    yesterday = now - timedelta(days=1)
    seqs: dict[str, list[int]] = {}
    real_now = audit._now

    def add(label: str, when: datetime, **fields) -> None:
        iso = when.astimezone(timezone.utc).isoformat(timespec="microseconds")
        monkeypatch.setattr(audit, "_now", lambda: iso)
        with rt.sessions.begin() as s:
            seqs.setdefault(label, []).append(audit.append(s, key, **fields).seq)

    oct_ = datetime(2026, 10, 1)
    add("sep", local(oct_ - timedelta(days=1), 23, 59), event_type="app.start", actor="os:cxrd")
    for day, study in ((1, PSEUDO_STUDY), (12, original_pseudo), (31, PSEUDO_STUDY)):
        when = oct_ + timedelta(days=day - 1)
        add("oct", local(when, 0, 0) if day == 1 else local(when, 9), event_type="instance.stored",
            actor="aet:PACS1", host="10.0.0.2", study_uid=study, object_uid=f"2.25.{day}1",
            details={"deid": ["113100", "113107"]})
        add("oct", local(when, 10), event_type="prediction.created", actor="cxrd:worker", study_uid=study,
            object_uid=f"2.25.{day}1", details={"model": "v3", "positive": ["Effusion"]})
        add("oct", local(when, 11), event_type="result.sent", actor="cxrd:results", study_uid=study,
            details={"kind": "sr"})
    add("nov", local(datetime(2026, 11, 1), 0, 0), event_type="association.rejected", outcome=4,
        actor="aet:EARLY", host="10.9.9.9", details={"reason": "calling AE title not allowed"})
    add("older", local(now - timedelta(days=2), 12), event_type="association.rejected", outcome=4,
        actor="aet:OLD", host="10.9.9.8", details={"reason": "calling AE title not allowed"})
    add("yesterday", local(yesterday, 0, 0), event_type="association.rejected", outcome=4,
        actor="aet:EVIL", host="10.9.9.7", details={"reason": "calling AE title not allowed"})
    add("yesterday_ok", local(yesterday, 8), event_type="association.accepted", actor="aet:PACS1",
        host="10.0.0.2")
    add("yesterday", local(yesterday, 23, 59), event_type="association.rejected", outcome=4,
        actor="aet:EVIL", host="10.9.9.7", details={"reason": "host not allowed"})
    add("today", local(now, 0, 0), event_type="association.rejected", outcome=4, actor="aet:EVIL",
        host="10.9.9.7", details={"reason": "host not allowed"})
    monkeypatch.setattr(audit, "_now", real_now)
    return rt, seqs, original_pseudo


def _table_seqs(out: str) -> list[int]:
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["SEQ", "OCCURRED_AT", "EVENT_TYPE"]
    return [int(line.split()[0]) for line in lines[1:]]


def _events(rt: Runtime, after: int = 0) -> list[dict]:
    with rt.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM audit_events WHERE seq > :s ORDER BY seq"), {"s": after})
        return [dict(r._mapping) for r in rows]


def test_compliance_walkthrough_from_the_readme(state, capsys, tmp_path):
    rt, seqs, original_pseudo = state
    capsys.readouterr()

    # 1. yesterday's rejected associations (local midnight .. midnight)
    assert cli.main(step("association.rejected --since yesterday")) == 0
    out = capsys.readouterr().out
    assert _table_seqs(out) == seqs["yesterday"] and "aet:EVIL" in out and "host not allowed" in out

    # 2a. every event of one study, by pseudonym (the query is then audited under that study too)
    expected = [e["seq"] for e in _events(rt) if e["study_uid"] == PSEUDO_STUDY]
    assert cli.main(step(f"--study {PSEUDO_STUDY}")) == 0
    assert _table_seqs(capsys.readouterr().out) == expected and len(expected) == 6
    assert _events(rt)[-1]["event_type"] == "audit.query" and _events(rt)[-1]["study_uid"] == PSEUDO_STUDY

    # 2b. ... and by its original Study Instance UID with a reason: mapped, audited, never stored
    head = _events(rt)[-1]["seq"]
    expected = [e["seq"] for e in _events(rt) if e["study_uid"] == original_pseudo]
    assert cli.main(step(f"--study {ORIGINAL_STUDY}")) == 0
    assert _table_seqs(capsys.readouterr().out) == expected and len(expected) == 3
    used = _events(rt, head)
    assert [e["event_type"] for e in used] == ["reid.pseudonymize", "audit.query"]
    assert all(e["study_uid"] == original_pseudo for e in used)
    assert json.loads(used[0]["details"])["reason"] == "INC-4711 patient complaint"
    assert json.loads(used[1]["details"])["filters"]["study_given_as"] == "original"
    with rt.engine.connect() as conn:
        dump = " ".join(str(v) for row in conn.execute(text("SELECT * FROM audit_events")) for v in row)
    assert ORIGINAL_STUDY not in dump

    # 3. a month as DICOM audit messages, each valid against the PS3.15 A.5.1 schema
    argv = step("export --format dicom --month")
    assert cli.main(argv) == 0
    out_file = tmp_path / argv[argv.index("--output") + 1]
    assert (out_file.stat().st_mode & 0o777) == 0o600
    schema = etree.XMLSchema(etree.parse(str(audit_export.SCHEMA)))
    messages = [etree.fromstring(line.encode()) for line in audit_export.read_dicom_lines(out_file.read_text())]
    assert len(messages) == len(seqs["oct"]) == 9  # not 30 Sep 23:59 local, not 1 Nov 00:00 local
    assert all(schema.validate(m) for m in messages), schema.error_log.last_error
    assert {m.find("EventIdentification/EventID").get("csd-code") for m in messages} == {"110104", "110110"}
    exported = _events(rt)[-1]
    assert exported["event_type"] == "audit.export" and json.loads(exported["details"])["exported"] == 9

    # 4. a row edited directly in SQL is found and named
    assert cli.main(step("audit verify")) == 0
    assert "intact" in capsys.readouterr().out
    victim = seqs["yesterday"][0]
    with rt.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'aet:FRIEND' WHERE seq = :s"), {"s": victim})
    assert cli.main(step("audit verify")) == 1
    err = capsys.readouterr().err
    assert f"broken at row {victim}:" in err and "modified" in err

    # 5. the uses of the audit trail are themselves listed
    assert cli.main(step("--event 'audit.*'")) == 0
    out = capsys.readouterr().out
    for kind in ("audit.query", "audit.export", "audit.verify"):
        assert kind in out


def test_json_pages_with_a_cursor_cover_every_event_once(state, capsys):
    rt, seqs, _ = state
    capsys.readouterr()
    seen, after = [], None
    while True:
        argv = ["audit", "query", "--event", "instance.*", "--event", "prediction.created", "--limit", "2",
                "--format", "json"] + (["--after-seq", str(after)] if after else [])
        assert cli.main(argv) == 0
        page = json.loads(capsys.readouterr().out)
        seen += [e["seq"] for e in page["events"]]
        after = page["next_after_seq"]
        if after is None:
            break
    assert seen == sorted(seqs["oct"][i] for i in range(9) if i % 3 != 2)


def test_csv_and_outcome_filters(state, capsys):
    _, seqs, _ = state
    capsys.readouterr()
    assert cli.main(["audit", "query", "--outcome", "failure", "--actor", "aet:*", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("seq,occurred_at,event_id")
    assert [int(line.split(",")[0]) for line in lines[1:]] == sorted(
        seqs["nov"] + seqs["older"] + seqs["yesterday"] + seqs["today"])


@pytest.mark.parametrize("argv,needle", [
    (["audit", "query", "--reason", "why"], "--reason is only used with --study"),
    (["audit", "query", "--study", ORIGINAL_STUDY], "add --reason"),
    (["audit", "query", "--month", "2026-10", "--since", "today"], "either --month"),
    (["audit", "query", "--since", "today", "--until", "yesterday"], "--since must be before"),
    (["audit", "query", "--event", "association.rejectd"], "unknown audit event"),
    (["audit", "query", "--since", "last week"], "cannot read time"),
    (["audit", "query", "--outcome", "bad"], "outcome must be one of"),
    (["audit", "export", "--output", "/nonexistent/dir/x.xml"], "cannot write"),
], ids=["reason-alone", "original-without-reason", "month-and-since", "reversed", "event-typo", "time", "outcome", "output"])
def test_bad_arguments_are_one_line_errors_and_nothing_is_audited(state, capsys, argv, needle):
    rt, _, _ = state
    before = len(_events(rt))
    capsys.readouterr()
    assert cli.main(argv) != 0
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert len(_events(rt)) == before


def test_stdout_export_does_not_include_its_own_event(state, capsys):
    rt, _, _ = state
    capsys.readouterr()
    assert cli.main(["audit", "export", "--format", "json", "--since", "2026-11-01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(json.loads(line)["event_type"] != "audit.export" for line in lines)
    last = _events(rt)[-1]
    assert last["event_type"] == "audit.export" and json.loads(last["details"])["exported"] == len(lines)


def test_the_person_who_logged_in_is_named_as_the_actor(state, capsys, monkeypatch, tmp_path):
    """The kernel's login uid names them (kept across sudo); SUDO_USER, which anyone can set, does not."""
    import pwd

    from daemon import runtime
    rt, _, _ = state
    login = tmp_path / "loginuid"
    login.write_text(str(os.geteuid() + 4242))
    monkeypatch.setattr(runtime, "LOGINUID_FILE", login)
    monkeypatch.setenv("SUDO_USER", "alice")
    assert cli.main(["audit", "verify"]) == 0
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert _events(rt)[-1]["actor"] == f"os:uid{os.geteuid() + 4242}(as:{me})"


def test_verify_against_an_anchor_finds_rows_cut_off_the_end(state, capsys):
    rt, _, _ = state
    capsys.readouterr()
    assert cli.main(["audit", "verify", "--format", "json"]) == 0
    good = json.loads(capsys.readouterr().out)
    anchor = f"{good['last_seq']}:{good['last_hash']}"
    assert cli.main(["audit", "verify", "--expect-head", anchor]) == 0
    with rt.engine.begin() as conn:  # remove the tail, including the verify events written since
        conn.execute(text("DELETE FROM audit_events WHERE seq >= :s"), {"s": good["last_seq"] - 1})
    capsys.readouterr()
    assert cli.main(["audit", "verify"]) == 0  # without the anchor a clean cut is invisible
    assert cli.main(["audit", "verify", "--expect-head", anchor]) == 1
    assert "removed from the end" in capsys.readouterr().err
    assert cli.main(["audit", "verify", "--expect-head", "12:nothex"]) == 2


def test_expect_head_names_exactly_the_rows_cut_even_after_new_rows_took_their_numbers(state, capsys):
    """Three anchored rows are cut from the end, then a command writes a row (which takes the first
    removed number and chains correctly): the report still names all three, not the last two."""
    rt, _, _ = state
    capsys.readouterr()
    assert cli.main(["audit", "verify", "--format", "json"]) == 0
    good = json.loads(capsys.readouterr().out)
    last = good["last_seq"]
    assert good["head"] == f"{last}:{good['last_hash']}@{good['last_at']}"
    with rt.engine.begin() as conn:  # rows last-2..last, and the verify event written after them
        conn.execute(text("DELETE FROM audit_events WHERE seq >= :s"), {"s": last - 2})
    assert cli.main(["audit", "query", "--limit", "1"]) == 0  # writes audit.query as row last-2
    assert _events(rt)[-1]["seq"] == last - 2
    capsys.readouterr()
    assert cli.main(["audit", "verify", "--expect-head", good["head"]]) == 1
    err = capsys.readouterr().err
    assert f"audit chain broken at row {last - 2}: rows {last - 2}..{last} were removed from the end" in err
    assert f"rows {last - 2}..{last - 2} now in the table were written after the removal" in err
    # SEQ:HASH alone has no time to tell the rows written since from old ones: it says "at least"
    # (the failed verify above wrote one more row, which took number last-1)
    assert cli.main(["audit", "verify", "--expect-head", f"{last}:{good['last_hash']}"]) == 1
    assert f"rows {last}..{last} were removed from the end (at least" in capsys.readouterr().err
    for bad in (f"{last}:{good['last_hash']}@yesterday", f"{last}:{good['last_hash']}@2026-11-29T10:00:00"):
        assert cli.main(["audit", "verify", "--expect-head", bad]) == 2


def test_an_audit_table_emptied_after_init_fails_verification(tmp_path):
    """`init` anchors the chain's head outside the database, so deleting every row (which leaves a
    chain that verifies as empty) or the newest ones is reported against that anchor."""
    import sqlite3
    import subprocess
    import sys
    CXRD = str(Path(sys.executable).with_name("cxrd"))  # (`conftest` may name another test folder's here)
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    assert subprocess.run([CXRD, "init"], cwd=tmp_path, env=env, capture_output=True).returncode == 0
    ok = subprocess.run([CXRD, "audit", "verify"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "reaches the head anchored at" in ok.stdout, ok.stderr
    db = sqlite3.connect(tmp_path / "var" / "cxrd.db")
    db.execute("DELETE FROM audit_events")
    db.commit()
    db.close()
    broken = subprocess.run([CXRD, "audit", "verify"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert broken.returncode == 1
    assert "audit chain broken at row 1" in broken.stderr and "removed from the end" in broken.stderr
