"""Backup and restore of a cxrd state directory: database, vault, keyring and models.

Order matters for consistency while the daemon keeps running: the database is snapshotted FIRST
(SQLite's online backup API), then the vault is copied. Every instance row in the snapshot was
committed after its object was fsynced, so every object the snapshot refers to is in the vault copy.
The audit chain is verified, and its head (seq, hash) recorded in the backup's manifest, from the
SNAPSHOT: the live database keeps growing while the backup runs, and a head read from it would name
rows the backup does not hold, so the restore would refuse its own backup. A restore verifies the
chain against the recorded head, so a backup whose audit rows were cut short or edited is refused.

Neither operation leaves a half-made directory: each builds its result in a temporary directory
beside the destination and renames it into place only when complete; any failure removes it. A
restore checks everything it can before copying a byte (the target is new, the master key is
private and opens the backup's keyring), so a wrong key costs nothing and the retry starts clean.

The master key is NOT copied unless asked: a backup holding both the ciphertext and its key is only
as safe as the medium it sits on. Keep the key (or the systemd credential) in a separate place.
PostgreSQL databases are backed up with pg_dump; this then copies the files only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sqlite3
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from daemon.errors import DaemonError
from daemon.runtime import Runtime
from storage import audit, db
from storage.durable import fsync_path
from storage.keys import load_keys
from storage.models import Instance

MANIFEST = "cxrd-backup.json"
FORMAT = 1


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
        fsync_path(path, directory=path.is_dir())


@contextlib.contextmanager
def _beside(target: Path, purpose: str) -> Iterator[Path]:
    """A new private directory next to `target` (same file system, so it can be renamed onto it);
    removed with everything in it, and any parent made for it, unless the caller moved it away."""
    made = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.{purpose}-", dir=target.parent))
    try:
        yield work
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
            for parent in made:  # innermost first; only if still empty
                with contextlib.suppress(OSError):
                    parent.rmdir()


def _snapshot_sqlite(live: Path, out_file: Path) -> None:
    """A consistent copy of the live database while readers and writers keep going."""
    src = sqlite3.connect(live, timeout=30)
    out = sqlite3.connect(out_file)
    try:
        with out:
            src.backup(out)
        out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
    finally:
        out.close()
        src.close()


@contextlib.contextmanager
def _read_only(sqlite_file: Path) -> Iterator[Session]:
    """A session on a SQLite file that can neither change it nor create -wal/-shm files beside it."""
    uri = f"file:{sqlite_file}?mode=ro&immutable=1"
    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True))
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def _verified_head(session: Session, audit_key: bytes) -> tuple[audit.VerifyReport, int]:
    report = audit.verify(session, audit_key)
    if not report.ok:
        raise DaemonError(f"audit chain is broken at row {report.first_bad_seq} ({report.reason}); "
                          "investigate before backing up (cxrd audit verify)")
    return report, session.scalar(select(func.count()).select_from(Instance)) or 0


def backup(rt: Runtime, dest: Path, include_master_key: bool = False) -> dict[str, Any]:
    dest = dest.absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DaemonError(f"backup destination {dest} is not empty")
    if db.schema_revision(rt.engine) is None:
        raise DaemonError("nothing to back up: no cxrd database (run `cxrd init` first)")
    sqlite_path = rt.sqlite_file
    with _beside(dest, "partial") as work:
        if sqlite_path is not None:
            _snapshot_sqlite(sqlite_path, work / "cxrd.db")
            with _read_only(work / "cxrd.db") as session:  # the head the backup holds, not the live one
                report, instances = _verified_head(session, rt.keys.audit_key)
                schema = session.scalar(text("SELECT version_num FROM alembic_version"))
        else:  # PostgreSQL: pg_dump is the backup of the rows; record the head as it is now
            with rt.read_sessions() as session:
                report, instances = _verified_head(session, rt.keys.audit_key)
            schema = db.schema_revision(rt.engine)
        objects = _copy_tree(rt.vault_dir, work / "vault", skip_empty=True) if rt.vault_dir.exists() else 0
        models = _copy_tree(rt.models_dir, work / "models") if rt.models_dir.exists() else 0
        (work / "keys").mkdir(mode=0o700)
        shutil.copy2(rt.keyring_file, work / "keys" / "keyring.json")
        if include_master_key:
            shutil.copy2(rt.key_file, work / "keys" / "master.key")
        manifest = {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "schema": schema, "database": "sqlite" if sqlite_path else "external",
                    "instances": instances, "vault_objects": objects, "model_files": models,
                    "audit_head": [report.last_seq, report.last_hash],
                    "master_key_included": include_master_key}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _fsync_tree(work)
        os.rename(work, dest)  # replaces an empty directory; the backup appears whole or not at all
        fsync_path(dest.parent, directory=True)
    rt.audit("backup.created", instances=instances, vault_objects=objects, audit_seq=report.last_seq,
             master_key_included=include_master_key)
    return manifest


def _read_manifest(src: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except (OSError, ValueError):
        raise DaemonError(f"{src} is not a cxrd backup (no readable {MANIFEST})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DaemonError(f"unsupported backup format {manifest.get('format') if isinstance(manifest, dict) else '?'}")
    return manifest


def _inside(path: Path, root: Path) -> Path | None:
    """`path` relative to `root`, or None when it lies elsewhere."""
    try:
        return path.relative_to(root)
    except ValueError:
        return None


def restore(rt: Runtime, src: Path) -> dict[str, Any]:
    src = src.absolute()
    manifest = _read_manifest(src)
    state = rt.state_dir
    key_in_state = _inside(rt.key_file, state)
    # 1. Everything that can be checked before a byte is written.
    present = [p for p in state.rglob("*") if not p.is_dir()] if state.exists() else []
    if state.exists() and not state.is_dir() or any(p != rt.key_file for p in present):
        raise DaemonError(f"state directory {state} is not empty; restore only into a new one "
                          "(it may hold the master key you put back, nothing else)")
    sqlite_path = rt.sqlite_file
    db_in_state = None if sqlite_path is None else _inside(sqlite_path, state)
    if manifest.get("database") == "sqlite" and sqlite_path is None:
        raise DaemonError("this backup holds a SQLite database but database_url points elsewhere")
    if manifest.get("database") != "sqlite" and sqlite_path is not None:
        raise DaemonError("this backup holds no database (it was taken with PostgreSQL): restore the "
                          "pg_dump and set database_url to it")
    if sqlite_path is not None and db_in_state is None and sqlite_path.exists():
        raise DaemonError(f"database {sqlite_path} already exists; restore only into a new one")
    if rt.key_file.exists():
        key_source = rt.key_file
    elif manifest.get("master_key_included") and (src / "keys" / "master.key").exists():
        key_source = src / "keys" / "master.key"
    else:
        raise DaemonError(f"master key not found at {rt.key_file}: put the key you kept separately "
                          "there (mode 0600) and run restore again")
    load_keys(key_source, src / "keys" / "keyring.json")  # refuses a key others can read, or another key

    # 2. Build the whole state beside the target, verify it there.
    with _beside(state, "restoring") as work:
        work_db = None
        if sqlite_path is not None:
            work_db = work / (db_in_state or "cxrd.db")
            work_db.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copy2(src / "cxrd.db", work_db)
        _copy_tree(src / "vault", work / "vault")
        if (src / "models").exists():
            _copy_tree(src / "models", work / "models")
        (work / "keys").mkdir(mode=0o700)
        shutil.copy2(src / "keys" / "keyring.json", work / "keys" / "keyring.json")
        for sub in ("vault", "models", "inbox", "cache"):  # what `cxrd init` makes
            (work / sub).mkdir(exist_ok=True, mode=0o700)
        result = _verify_restored(rt, manifest, work, work_db, key_source)
        # 3. Move into place: the key first (it is needed to read anything), then the state.
        placed_key = None
        if key_source != rt.key_file:
            placed_key = (work / key_in_state) if key_in_state is not None else rt.key_file
            placed_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copyfile(key_source, placed_key)
            os.chmod(placed_key, 0o600)
        elif key_in_state is not None:  # put back by hand inside the target: carry it over
            (work / key_in_state).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.link(rt.key_file, work / key_in_state)
        _fsync_tree(work)
        try:
            if work_db is not None and db_in_state is None:
                os.rename(work_db, sqlite_path)
            if state.exists():  # only the key (now also linked into `work`) and empty directories
                rt.key_file.unlink(missing_ok=True)
                for d in sorted((p for p in state.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    d.rmdir()
            os.rename(work, state)  # an empty directory is replaced atomically
        except BaseException:
            if placed_key is not None and key_in_state is None:
                placed_key.unlink(missing_ok=True)
            if work_db is not None and db_in_state is None and sqlite_path.exists() and not work_db.exists():
                os.rename(sqlite_path, work_db)
            raise
        fsync_path(state.parent, directory=True)
    return result


def _verify_restored(rt: Runtime, manifest: dict[str, Any], work: Path, work_db: Path | None,
                     key_file: Path) -> dict[str, Any]:
    """Migrate and verify the state built in `work` through a Runtime that points at it."""
    storage = dataclasses.replace(
        rt.settings.storage, state_dir=str(work),
        database_url=f"sqlite:///{work_db}" if work_db is not None else rt.settings.storage.database_url)
    security = dataclasses.replace(rt.settings.security, key_file=str(key_file))
    trt = Runtime(dataclasses.replace(rt.settings, storage=storage, security=security), rt.config_file)
    try:
        db.migrate(trt.engine)  # a backup from an older release is brought up to this schema
        seq, head = manifest["audit_head"]
        with trt.read_sessions() as session:
            report = audit.verify(session, trt.keys.audit_key, expect_head=(seq, head) if seq else None)
            refs = list(session.scalars(select(Instance.vault_object).where(Instance.vault_object.is_not(None))))
        if not report.ok:
            raise DaemonError(f"restored audit chain does not verify at row {report.first_bad_seq}: {report.reason}")
        missing = [r for r in refs if not trt.vault.exists(r)]
        if missing:
            raise DaemonError(f"{len(missing)} stored instance(s) have no vault object in the backup")
        trt.audit("backup.restored", instances=len(refs), audit_seq=seq)
        return {"instances": len(refs), "audit_rows": report.rows, **manifest}
    finally:
        if "engine" in trt.__dict__:
            trt.engine.dispose()  # closes SQLite's -wal into the file before the directory moves
