"""The hot statements run straight on the driver connection (Postgres).

Executing a statement through SQLAlchemy costs Python on every call — the statement tree walked
for its cache key, an execution context, the result's metadata for 40-odd columns — about as much
as the statement itself takes on the server; running it here saves 0.1-0.2 ms a call on this
kind of machine (``BENCHMARKS.md``: submit, claim, success measured both ways). The statements on a
job's critical path (a one-job submit, the claim, the success — :mod:`farm.ledger.onestep` — and a
wait's status read) are
templates built once, so this module compiles each template once per dialect and runs it on the
psycopg connection *under* the caller's SQLAlchemy :class:`~sqlalchemy.engine.Connection` — the
same connection, in the same transaction (or autocommit) — with SQLAlchemy's own bind and result
processors (so values go in and come out exactly as through ``conn.execute``) and a server-side
prepared statement.

What callers see does not change: a driver error is raised as SQLAlchemy's wrapped error (the
ledger's guard turns it into :class:`~farm.errors.LedgerUnavailable` and friends), and a lost
connection is invalidated, so the pool connects anew. When the engine has execution event
listeners (tracing, the tests that count statements) the statement goes through ``conn.execute``
instead, so that they see it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Insert, Select
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any] | None
#: What runs here: a prebuilt SELECT (with data-modifying CTEs) or INSERT.
Statement = Select[Any] | Insert


@dataclass
class _Compiled:
    """One template compiled for one dialect: its SQL, its bind processors, its result columns."""

    compiled: SQLCompiler
    sql: str
    binds: dict[str, Any]
    #: Column names and result processors, known after the first run (from the cursor's description).
    columns: tuple[tuple[str, Processor], ...] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


#: How many compiled templates are kept (the farm runs about a dozen; the oldest unused go first).
COMPILED_KEPT = 128
_compiled: OrderedDict[tuple[int, str, str], tuple[Statement, _Compiled]] = OrderedDict()
_compiled_lock = threading.Lock()


def first(conn: Connection, statement: Statement, params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The first row of ``statement`` run with ``params`` (a dict by column name), or None when it gave none."""
    if _observed(conn):
        row = conn.execute(statement, dict(params)).mappings().first()
        return None if row is None else dict(row)
    return _run(conn, statement, params, fetch=True)


def execute(conn: Connection, statement: Statement, params: Mapping[str, Any]) -> None:
    """Run ``statement`` with ``params`` (no rows wanted)."""
    if _observed(conn):
        conn.execute(statement, dict(params))
        return
    _run(conn, statement, params, fetch=False)


def _observed(conn: Connection) -> bool:
    """True when this must go through SQLAlchemy.

    Statement execution is listened to (the listeners must see every statement), or the driver
    is not psycopg (SQLite: its statements are cheap in-process calls anyway).
    """
    if conn.dialect.driver != "psycopg":
        return True
    dispatch = conn.dispatch
    return bool(dispatch.before_execute or dispatch.after_execute or dispatch.before_cursor_execute
                or dispatch.after_cursor_execute)


def _for(statement: Statement, dialect: Dialect) -> _Compiled:
    key = (id(statement), dialect.name, dialect.driver)
    with _compiled_lock:
        found = _compiled.get(key)
        if found is not None and found[0] is statement:
            _compiled.move_to_end(key)
            return found[1]
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        if (compiled.positiontup is not None or compiled.escaped_bind_names or compiled.literal_execute_params
                or compiled.post_compile_params):
            raise ValueError("farm.ledger.direct runs named-parameter statements without expanding parameters")
        binds = {name: bind.type.dialect_impl(dialect).bind_processor(dialect)
                 for bind, name in compiled.bind_names.items()}
        entry = _Compiled(compiled, compiled.string, binds)
        # (the template is kept alive with its entry, so its id is not reused while the entry exists)
        _compiled[key] = (statement, entry)
        if len(_compiled) > COMPILED_KEPT:
            _compiled.popitem(last=False)
        return entry


def _run(conn: Connection, statement: Statement, params: Mapping[str, Any], *, fetch: bool) -> dict[str, Any] | None:
    dialect = conn.dialect
    entry = _for(statement, dialect)
    values = entry.compiled.construct_params(dict(params))
    for name, process in entry.binds.items():
        if process is not None and name in values:
            values[name] = process(values[name])
    fairy = conn.connection
    dbapi_connection = fairy.driver_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(entry.sql, values, prepare=True)
        row = cursor.fetchone() if fetch else None
        if row is None:
            return None
        columns = entry.columns or _columns(entry, statement, cursor, dialect)
        return {name: value if process is None else process(value)
                for (name, process), value in zip(columns, row, strict=True)}
    except BaseException as error:
        if isinstance(error, Exception) and not isinstance(error, dialect.loaded_dbapi.Error):
            raise
        # SQLAlchemy's own handling, as for conn.execute: the error wrapped, a disconnect (or an
        # interrupt mid-statement) invalidates the connection and the pool's older ones.
        conn._handle_dbapi_exception(error, entry.sql, values, cursor, None)
    finally:
        cursor.close()


def _columns(entry: _Compiled, statement: Statement, cursor: Any,
             dialect: Dialect) -> tuple[tuple[str, Processor], ...]:
    """The result's column names and SQLAlchemy's result processors (by the selected columns' types)."""
    selected = list(getattr(statement, "selected_columns", []))
    description = cursor.description
    if len(selected) != len(description):
        raise ValueError(f"{len(description)} result columns, {len(selected)} selected: not a plain SELECT")
    columns = tuple(
        (d.name, column.type.dialect_impl(dialect).result_processor(dialect, d.type_code))
        for column, d in zip(selected, description, strict=True)
    )
    with entry.lock:
        entry.columns = columns
    return columns
