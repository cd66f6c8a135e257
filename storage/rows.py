"""The ingest transaction on the driver's own cursor: insert statements compiled once per engine.

Every acknowledged image commits four rows (instance, job, re-identification entry, audit event)
before its C-STORE response, over an association whose sender waits for that response before it
sends the next image, so the CPU this transaction costs is paid once per image, in the sender's
wait. Through SQLAlchemy's Session and Core that cost is mostly statement construction, cache keys,
execution contexts, session and pool bookkeeping, all the same for every image. Here SQLAlchemy
still does what it is good at, once: it compiles each INSERT for the engine's dialect and supplies
each column's default and bind processor (the same code an ORM insert would run, so the stored
bytes are identical). Per image only the driver's `execute` calls remain.

The tables and their defaults stay declared in `storage.models`; a column added there with a
Python-side default is filled here without a change, one with only a server default is left to
the database. Errors come back as two exceptions whose meaning ingest maps to DICOM statuses:
`RowConflict` (a constraint refused a row) and `storage.errors.DatabaseUnavailable` (the database
cannot be used; the connection is discarded, not reused).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from sqlalchemy import Table, insert, text
from sqlalchemy.engine import Engine

from storage import audit
from storage.errors import DatabaseUnavailable
from storage.models import AuditEvent, Instance, Job, ReidEntry


class RowConflict(Exception):
    """A unique or foreign-key constraint refused a row; the transaction was rolled back."""


@dataclass(frozen=True)
class _Insert:
    sql: str
    names: tuple[str, ...]                      # parameter order for positional paramstyles
    defaults: tuple[tuple[str, Callable[[], Any]], ...]
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    positional: bool
    returning: bool

    def params(self, values: dict[str, Any]) -> tuple | dict:
        row = dict(values)
        for name, make in self.defaults:
            if name not in row:
                row[name] = make()
        for name, process in self.processors:
            row[name] = process(row[name])
        return tuple(row[n] for n in self.names) if self.positional else row


def _default_maker(column) -> Callable[[], Any] | None:  # noqa: ANN001 - sqlalchemy Column
    default = column.default
    if default is None:
        return None if not column.nullable else (lambda: None)
    if default.is_scalar:
        value = default.arg
        return lambda: value
    if default.is_callable:
        fn = default.arg  # SQLAlchemy wraps a zero-argument callable to take an execution context
        return lambda: fn(None)
    raise ValueError(f"column {column.name}: only scalar and Python-callable defaults are supported")


def _compile(engine: Engine, table: Table, returning: str | None) -> _Insert:
    dialect = engine.dialect
    # Left to the database: the generated key we ask back, and columns it fills itself.
    columns = [c for c in table.columns
               if not (c.primary_key and c.autoincrement is not False and c.name == returning)
               and not (c.default is None and c.server_default is not None)]
    stmt = insert(table)
    if returning and dialect.insert_returning:
        stmt = stmt.returning(table.c[returning])
    compiled = stmt.compile(dialect=dialect, column_keys=[c.name for c in columns])
    positional = bool(compiled.positional)
    names = tuple(compiled.positiontup) if positional else tuple(c.name for c in columns)
    by_name = {c.name: c for c in columns}
    if set(names) != set(by_name):
        raise ValueError(f"{table.name}: compiled parameters {names} do not match its columns")
    defaults = tuple((c.name, m) for c in columns if (m := _default_maker(c)) is not None)
    # dialect_impl: the type as this dialect runs it (a TypeDecorator over SQLite's DATETIME, say),
    # so values are bound exactly as an ORM or Core insert would bind them.
    processors = tuple((c.name, p) for c in columns
                       if (p := c.type.dialect_impl(dialect).bind_processor(dialect)) is not None)
    return _Insert(str(compiled), names, defaults, processors, positional,
                   returning=bool(returning and dialect.insert_returning))


class IngestRows:
    """Compiled once per engine; `transaction()` is safe to call from many threads at once (each
    call checks its own connection out of the engine's pool)."""

    def __init__(self, engine: Engine, audit_key: bytes):
        self.engine = engine
        self.audit_key = audit_key
        self.dialect = engine.dialect.name
        self.dbapi = engine.dialect.loaded_dbapi
        self.instance = _compile(engine, Instance.__table__, returning="id")
        self.job = _compile(engine, Job.__table__, returning="id")
        self.reid = _compile(engine, ReidEntry.__table__, returning=None)
        self.audit_row = _compile(engine, AuditEvent.__table__, returning=None)
        table = AuditEvent.__table__
        self.audit_head = str(text(f"SELECT seq, hash FROM {table.name} ORDER BY seq DESC LIMIT 1")
                              .compile(dialect=engine.dialect))
        self.audit_lock = (f"SELECT pg_advisory_xact_lock({audit.ADVISORY_LOCK_ID})"
                           if self.dialect == "postgresql" else None)

    def audit(self, **fields: Any) -> None:
        """One audit event in a transaction of its own (see `Transaction.audit_event`)."""
        with self.transaction() as tx:
            tx.audit_event(**fields)

    @contextlib.contextmanager
    def transaction(self) -> Iterator["Transaction"]:
        """One transaction: committed if the block returns, rolled back if it raises."""
        try:
            conn = self.engine.raw_connection()
        except Exception as exc:  # the driver's errors, or SQLAlchemy's wrapping of them
            raise DatabaseUnavailable(f"database unavailable ({type(exc).__name__})") from None
        cursor = None
        try:
            cursor = conn.cursor()
            if self.dialect == "sqlite":
                # Writers take SQLite's lock up front, as storage.db's BEGIN IMMEDIATE does.
                cursor.execute("BEGIN IMMEDIATE")
            tx = Transaction(self, cursor)
            yield tx
            conn.commit()
        except self.dbapi.IntegrityError as exc:
            _rollback(conn)
            raise RowConflict(type(exc).__name__) from None
        except (self.dbapi.OperationalError, self.dbapi.InterfaceError) as exc:
            conn.invalidate()  # a broken connection must not go back to the pool
            raise DatabaseUnavailable(f"database unavailable ({type(exc).__name__})") from None
        except BaseException:
            _rollback(conn)
            raise
        finally:
            if cursor is not None:
                with contextlib.suppress(Exception):
                    cursor.close()
            conn.close()


class Transaction:
    def __init__(self, rows: IngestRows, cursor):  # noqa: ANN001 - DBAPI cursor
        self.rows = rows
        self.cursor = cursor

    def _insert(self, stmt: _Insert, values: dict[str, Any]) -> Any:
        self.cursor.execute(stmt.sql, stmt.params(values))
        if stmt.returning:
            return self.cursor.fetchone()[0]
        return getattr(self.cursor, "lastrowid", None)  # SQLite without RETURNING (before 3.35)

    def instance(self, **values: Any) -> int:
        return self._insert(self.rows.instance, values)

    def job(self, **values: Any) -> int:
        return self._insert(self.rows.job, values)

    def reid_entry(self, **values: Any) -> None:
        self._insert(self.rows.reid, values)

    def audit_event(self, **fields: Any) -> None:
        """Append one chained audit event (see `storage.audit.append`, whose rules apply)."""
        values = audit.new_event(**fields)
        if self.rows.audit_lock:
            self.cursor.execute(self.rows.audit_lock)
            self.cursor.fetchall()
        self.cursor.execute(self.rows.audit_head)
        head = self.cursor.fetchone()
        audit.chain(self.rows.audit_key, values, head)
        self._insert(self.rows.audit_row, values)


def _rollback(conn) -> None:  # noqa: ANN001
    with contextlib.suppress(Exception):
        conn.rollback()
