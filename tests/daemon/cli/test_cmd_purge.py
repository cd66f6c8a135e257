"""`cxrd purge`: dry run counts, a real run crypto-shreds and audits, retention 0 keeps everything."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from config import load_settings
from daemon.cli import main as cli
from daemon.runtime import Runtime
from storage.models import Instance


@pytest.fixture
def cxrd(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRD_STORAGE__STATE_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setattr(cli, "COMMAND_MODULES", list(dict.fromkeys(cli.COMMAND_MODULES + ["daemon.cli.purge"])))
    assert cli.main(["init"]) == 0
    rt = Runtime(load_settings(None))
    old = datetime.now(timezone.utc) - timedelta(days=40)
    with rt.sessions.begin() as s:
        for i, received in enumerate((old, old, datetime.now(timezone.utc))):
            rt.vault.put(f"obj{i}", b"pixels", fsync=False)
            s.add(Instance(sop_instance_uid=f"2.25.{i}", study_uid="2.25.77", series_uid="2.25.78",
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", state="reported",
                           vault_object=f"obj{i}", received_at=received))
    return rt, monkeypatch


def test_purge_dry_run_then_real_run(cxrd, capsys):
    rt, monkeypatch = cxrd
    capsys.readouterr()
    assert cli.main(["purge", "--dry-run"]) == 0
    assert "kept forever" in capsys.readouterr().out  # default retention_days = 0
    monkeypatch.setenv("CXRD_STORAGE__RETENTION_DAYS", "30")
    assert cli.main(["purge", "--dry-run", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["expired"] == 2
    assert sorted(rt.vault.object_ids()) == ["obj0", "obj1", "obj2"]
    assert cli.main(["purge"]) == 0
    assert "crypto-shredded 2 images" in capsys.readouterr().out
    assert sorted(rt.vault.object_ids()) == ["obj2"]
    with rt.engine.connect() as conn:
        kinds = [r[0] for r in conn.execute(text("SELECT event_type FROM audit_events "
                                                 "WHERE event_type <> 'app.init' ORDER BY seq"))]
    assert kinds == ["instance.deleted", "instance.deleted", "purge.expired"]
    assert cli.main(["audit", "verify"]) == 0
