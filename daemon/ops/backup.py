"""Backup and restore of a cxrd state directory: database, vault, keyring and models.

Order matters for consistency while the daemon keeps running: the database is snapshotted FIRST
(SQLite's online backup API), then the vault is copied. Every instance row in the snapshot was
committed after its object was fsynced, so every object the snapshot refers to is in the vault copy.
The audit chain head (seq, hash) goes into the backup's manifest, and a restore verifies the chain
against it, so a backup whose audit rows were cut short or edited is refused.

The master key is NOT copied unless asked: a backup holding both the ciphertext and its key is only
as safe as the medium it sits on. Keep the key (or the systemd credential) in a separate place.
PostgreSQL databases are backed up with pg_dump; this then copies the files only.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from daemon.errors import DaemonError
from daemon.runtime import Runtime
from storage import audit, db
from storage.models import Instance

MANIFEST = "cxrd-backup.json"
FORMAT = 1


def _sqlite_path(rt: Runtime) -> Path | None:
    url = make_url(rt.settings.storage.database_url)
    return Path(url.database) if url.get_backend_name() == "sqlite" else None


def _copy_tree(src: Path, dest: Path, skip_empty: bool = False) -> int:
    n = 0
    for path in sorted(src.rglob("*")):
        if path.is_dir() or path.name.startswith(".") or (skip_empty and path.stat().st_size == 0):
            continue
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copy2(path, target)
        n += 1
    return n


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def backup(rt: Runtime, dest: Path, include_master_key: bool = False) -> dict[str, Any]:
    if dest.exists() and any(dest.iterdir()):
        raise DaemonError(f"backup destination {dest} is not empty")
    if db.schema_revision(rt.engine) is None:
        raise DaemonError("nothing to back up: no cxrd database (run `cxrd init` first)")
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    sqlite_path = _sqlite_path(rt)
    if sqlite_path is not None:
        src = sqlite3.connect(sqlite_path, timeout=30)
        out = sqlite3.connect(dest / "cxrd.db")
        with out:
            src.backup(out)  # consistent snapshot, readers and writers keep going
        out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        out.close()
        src.close()
    with rt.read_sessions() as session:
        report = audit.verify(session, rt.keys.audit_key)
        instances = session.scalar(select(func.count()).select_from(Instance)) or 0
    if not report.ok:
        raise DaemonError(f"audit chain is broken at row {report.first_bad_seq} ({report.reason}); "
                           "investigate before backing up (cxrd audit verify)")
    objects = _copy_tree(rt.vault_dir, dest / "vault", skip_empty=True) if rt.vault_dir.exists() else 0
    models = _copy_tree(rt.models_dir, dest / "models") if rt.models_dir.exists() else 0
    (dest / "keys").mkdir(mode=0o700)
    shutil.copy2(rt.keyring_file, dest / "keys" / "keyring.json")
    if include_master_key:
        shutil.copy2(rt.key_file, dest / "keys" / "master.key")
    manifest = {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "schema": db.schema_revision(rt.engine), "database": "sqlite" if sqlite_path else "external",
                "instances": instances, "vault_objects": objects, "model_files": models,
                "audit_head": [report.last_seq, report.last_hash], "master_key_included": include_master_key}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    _fsync_tree(dest)
    rt.audit("backup.created", instances=instances, vault_objects=objects, audit_seq=report.last_seq,
             master_key_included=include_master_key)
    return manifest


def restore(rt: Runtime, src: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except (OSError, ValueError):
        raise DaemonError(f"{src} is not a cxrd backup (no readable {MANIFEST})") from None
    if manifest.get("format") != FORMAT:
        raise DaemonError(f"unsupported backup format {manifest.get('format')}")
    state = rt.state_dir
    present = [p for p in state.rglob("*") if p.is_file()] if state.exists() else []
    if any(p != rt.key_file for p in present):  # only the master key put back by hand may be there
        raise DaemonError(f"state directory {state} is not empty; restore only into a new one")
    sqlite_path = _sqlite_path(rt)
    if manifest["database"] == "sqlite" and sqlite_path is None:
        raise DaemonError("this backup holds a SQLite database but database_url points elsewhere")
    if not rt.key_file.exists():
        if not manifest.get("master_key_included"):
            raise DaemonError(f"master key not found at {rt.key_file}: put the key you kept separately "
                               "there (mode 0600) and run restore again")
        rt.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copy2(src / "keys" / "master.key", rt.key_file)
        os.chmod(rt.key_file, 0o600)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    if sqlite_path is not None and manifest["database"] == "sqlite":
        shutil.copy2(src / "cxrd.db", sqlite_path)
    _copy_tree(src / "vault", rt.vault_dir)
    if (src / "models").exists():
        _copy_tree(src / "models", rt.models_dir)
    rt.keyring_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copy2(src / "keys" / "keyring.json", rt.keyring_file)
    db.migrate(rt.engine)  # a backup from an older release is brought up to this schema
    seq, head = manifest["audit_head"]
    with rt.read_sessions() as session:
        report = audit.verify(session, rt.keys.audit_key, expect_head=(seq, head) if seq else None)
        refs = list(session.scalars(select(Instance.vault_object).where(Instance.vault_object.is_not(None))))
    if not report.ok:
        raise DaemonError(f"restored audit chain does not verify at row {report.first_bad_seq}: {report.reason}")
    from storage.vault import Vault
    vault = Vault(rt.vault_dir, rt.keys.keyring)
    missing = [r for r in refs if not vault.exists(r)]
    if missing:
        raise DaemonError(f"{len(missing)} stored instance(s) have no vault object in the backup")
    rt.audit("backup.restored", instances=len(refs), audit_seq=seq)
    return {"instances": len(refs), "audit_rows": report.rows, **manifest}
