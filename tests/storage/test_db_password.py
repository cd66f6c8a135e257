"""The PostgreSQL password comes from a file only root and the service can read (a systemd credential,
`storage.database_password_file`) or from libpq's PGPASSFILE, never from the configuration file: a real
PostgreSQL 15 server that insists on a password (scram-sha-256) proves which one was used."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from conftest import running_postgres

from config import load_settings
from storage import db
from storage.errors import DatabaseUnavailable

PASSWORD = "s3cret-Only-In-The-Credential"


@pytest.fixture(scope="module")
def password_server() -> Iterator[str]:
    """A server whose every connection, loopback included, needs the password; yields a URL without it."""
    with running_postgres("scram-sha-256", PASSWORD) as url:
        yield url


@pytest.fixture
def no_libpq_password(monkeypatch, tmp_path):  # noqa: ANN001, ANN201
    """No password reaches libpq except the one under test (no ~/.pgpass, PGPASSWORD or PGPASSFILE)."""
    for var in ("PGPASSWORD", "PGPASSFILE", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _secret(path: Path, text: str, mode: int = 0o400) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.postgres
def test_without_a_password_the_server_refuses(password_server, no_libpq_password):
    with pytest.raises(DatabaseUnavailable) as exc:
        db.ping(db.engine_from_url(password_server))
    assert "password" in str(exc.value) and PASSWORD not in str(exc.value)


@pytest.mark.postgres
def test_the_systemd_credential_supplies_the_password(password_server, no_libpq_password, tmp_path, monkeypatch):
    creds = tmp_path / "credentials"
    _secret(creds / "cxrd.dbpass", PASSWORD + "\n")
    config = tmp_path / "cxrd.toml"
    config.write_text(f'[storage]\ndatabase_url = "{password_server}"\nstate_dir = "{tmp_path / "var"}"\n')
    settings = load_settings(config, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert settings.storage.database_password_file == str(creds / "cxrd.dbpass")
    assert PASSWORD not in config.read_text()
    engine = db.engine_from_url(settings.storage.database_url, settings.storage.database_password_file)
    db.ping(engine)
    assert PASSWORD not in repr(engine.url) and PASSWORD not in str(engine.url)
    # the command line the way the unit runs it: `cxrd init` migrates with that password
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([str(Path(os.sys.executable).with_name("cxrd")), "--config", str(config), "init"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert PASSWORD not in r.stdout + r.stderr
    assert db.schema_revision(engine) == db.head_revision()


@pytest.mark.postgres
def test_libpq_reads_pgpassfile_for_a_url_without_password(password_server, no_libpq_password, tmp_path,
                                                          monkeypatch):
    port = password_server.rsplit(":", 1)[1].split("/")[0]
    monkeypatch.setenv("PGPASSFILE", str(_secret(tmp_path / "pgpass", f"127.0.0.1:{port}:*:postgres:{PASSWORD}\n",
                                                 0o600)))
    db.ping(db.engine_from_url(password_server))


def test_a_password_file_others_can_read_is_refused_and_an_empty_one_means_none(tmp_path):
    loose = _secret(tmp_path / "loose", PASSWORD, 0o640)
    with pytest.raises(db.PasswordFileError) as exc:
        db.engine_from_url("postgresql+psycopg://cxrd@127.0.0.1:1/cxrd", str(loose))
    assert "0640" in str(exc.value) and PASSWORD not in str(exc.value)
    empty = _secret(tmp_path / "empty", "")
    engine = db.engine_from_url("postgresql+psycopg://cxrd@127.0.0.1:1/cxrd", str(empty))
    assert engine.url.password is None
    with pytest.raises(db.PasswordFileError):
        db.engine_from_url("postgresql+psycopg://cxrd@127.0.0.1:1/cxrd", str(tmp_path / "missing"))
    # a password written in the URL is used as is (the file is for URLs without one)
    explicit = db.engine_from_url("postgresql+psycopg://cxrd:inurl@127.0.0.1:1/cxrd", str(loose))
    assert explicit.url.password == "inurl"
