"""Engines, sessions and migrations: the one place that knows how cxrd talks to its database.

SQLite gets its pragmas here (WAL so readers never block the SCP's commits, synchronous=FULL so a
commit that returned is on disk before the PACS hears 0x0000, foreign keys, a busy timeout).
PostgreSQL is used as is. Errors that mean "the database is not there" become
`storage.errors.DatabaseUnavailable` so the daemon can answer 0xA700 and the CLI can print one line.

The PostgreSQL password need not be in the URL (nor, so, in the configuration file): a URL without
one takes it from `password_file` (`storage.database_password_file`, or the systemd credential
`cxrd.dbpass`), read here and never logged; with neither, libpq looks itself (PGPASSFILE,
~/.pgpass, PGPASSWORD) or authenticates without one (peer, certificate).
"""
from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, InterfaceError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import DatabaseUnavailable, StorageError

MIGRATIONS = Path(__file__).with_name("migrations")


class PasswordFileError(StorageError):
    """The database password file cannot be used; the message names the file, never its content."""


def read_password_file(path: str | os.PathLike) -> str | None:
    """The password in `path` (first line, without its line end); None when the file is empty.

    Refused when others could read it, like the master key: the point of a separate file is that only
    root and the service can.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise PasswordFileError(f"database password file {path} does not exist") from None
    except OSError as exc:
        raise PasswordFileError(f"database password file {path} cannot be read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PasswordFileError(f"database password file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise PasswordFileError(f"database password file {path} is accessible by group or others "
                                    f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`")
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        line = raw.decode("utf-8").splitlines()[0] if raw.strip() else ""
    except UnicodeDecodeError:
        raise PasswordFileError(f"database password file {path} is not UTF-8 text") from None
    return line or None


def engine_from_url(url: str, password_file: str = "") -> Engine:
    """Create an engine; for SQLite also create the parent directory and set the pragmas.

    `password_file` supplies the password of a server URL that has none (see the module docstring).
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUnavailable("database_url is not a valid SQLAlchemy URL") from None
    if password_file and parsed.get_backend_name() != "sqlite" and parsed.password is None:
        password = read_password_file(password_file)
        if password is not None:
            parsed = parsed.set(password=password)
    safe = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001 - DBAPI types
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below control transactions
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):  # noqa: ANN001
            # Writers take the lock up front (IMMEDIATE): a deferred transaction that reads and then
            # writes can fail with SQLITE_BUSY in WAL mode whatever the timeout. Read-only work goes
            # through `readonly(engine)` and never blocks the SCP's commits.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("cxrd_readonly")
                                 else "BEGIN IMMEDIATE")
    else:
        try:
            engine = create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20,
                                   connect_args={"connect_timeout": 10})
        except Exception as exc:  # missing driver and the like
            raise DatabaseUnavailable(f"cannot use database {safe}: {exc}") from None
    return engine


def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def readonly(engine: Engine) -> Engine:
    """The same engine for queries that never write (no write lock taken on SQLite)."""
    return engine.execution_options(cxrd_readonly=True)


@contextlib.contextmanager
def reachable(engine: Engine) -> Iterator[None]:
    """Turn driver-level connection failures into DatabaseUnavailable with a one-line reason."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "unreachable"
        raise DatabaseUnavailable(f"database {engine.url.render_as_string(hide_password=True)}: {reason}") from None


def _alembic_config(connection):  # noqa: ANN001
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine, revision: str = "head") -> str:
    """Bring the schema to `revision`, the newest by default (idempotent); return the revision reached.

    Only tests ask for an older revision, to build a database as an earlier release left it."""
    from alembic import command
    with reachable(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # One migrator at a time when several daemons start together.
            conn.execute(text("SELECT pg_advisory_xact_lock(7437001)"))
        command.upgrade(_alembic_config(conn), revision)
    return schema_revision(engine)


def schema_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext
    with reachable(engine), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


def ping(engine: Engine) -> None:
    with reachable(engine), engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def table_names(engine: Engine) -> list[str]:
    with reachable(engine):
        return sorted(inspect(engine).get_table_names())
