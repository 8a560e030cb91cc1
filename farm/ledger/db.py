"""Engines and migrations: how farm connects to a ledger database and brings its schema to head.

* :func:`make_engine` — an engine for a ledger URL. SQLite gets WAL mode, foreign keys, a busy
  timeout, and real transactions (``BEGIN``, or ``BEGIN IMMEDIATE`` for writes so two writers
  queue on the busy timeout instead of failing on a lock upgrade). ``postgresql://`` URLs use
  psycopg 3.
* :func:`alembic_config` — Alembic configured in code; the scripts live in the repository's
  top-level ``migrations/`` directory and ship inside the package as ``farm.ledger.migrations``
  (pyproject's ``package-dir``), so an editable install, a wheel and a Docker image all find them.
* :func:`upgrade`, :func:`downgrade`, :func:`current_revision`, :func:`head_revisions`,
  :func:`schema_diff` — the migration runner used by the gateway, ``farm db`` and the tests.

Callers outside the ledger go through :class:`farm.ledger.manager.Ledger`.
"""

from __future__ import annotations

import importlib.resources
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

#: Where Alembic's env.py and versions/ live: the package ``farm.ledger.migrations`` (the
#: repository's ``migrations/`` in an editable install, a copy inside a wheel).
MIGRATIONS_DIR = Path(str(importlib.resources.files("farm.ledger.migrations")))
#: Milliseconds an SQLite connection waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Seconds between two tries to switch a busy SQLite file to WAL.
WAL_SWITCH_RETRY_S = 0.02
#: Execution option that makes a transaction on SQLite start with ``BEGIN IMMEDIATE``.
WRITE_OPTION = "farm_write"
#: Seconds to wait for a Postgres connection before the ledger counts as unavailable.
CONNECT_TIMEOUT_S = 10

#: Alembic's ``context``/``op`` are process-wide proxies: one migration at a time per process.
#: Between processes, each migration runs in one transaction that first takes a lock (SQLite:
#: BEGIN IMMEDIATE; Postgres: the advisory lock below), so a second ``upgrade`` waits and then
#: finds the database at head.
_MIGRATION_LOCK = threading.Lock()
#: Postgres advisory lock key held (per transaction) while migrating: "farm" in ASCII.
PG_MIGRATION_LOCK_KEY = 0x6661726D


def normalize_url(url: str | URL) -> URL:
    """The SQLAlchemy URL, with plain ``postgresql://`` mapped to the psycopg 3 driver."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def is_sqlite(url: str | URL) -> bool:
    """True when ``url`` is an SQLite URL."""
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str | URL) -> Path | None:
    """The database file of an SQLite URL (None for in-memory databases and other backends)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def ensure_sqlite_dir(url: str | URL) -> None:
    """Create the directory an SQLite database file lives in."""
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str | URL, *, echo: bool = False, pre_ping: bool = True) -> Engine:
    """An engine for the ledger at ``url`` (see the module docstring for the SQLite setup).

    ``pre_ping`` tests a pooled connection that sat unused for :data:`PING_IDLE_S` or more before
    handing it out (:func:`_ping_when_idle`), so that a request after a database restart does not
    fail once. A caller that retries every ledger call (a worker: the first error after a restart
    invalidates the pool, the retry gets a fresh connection) turns it off.
    """
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        engine = create_engine(u, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if u.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    engine = create_engine(u, echo=echo, connect_args=connect_args)
    if pre_ping:
        _ping_when_idle(engine)
    return engine


#: A pooled connection unused for this long is tested (one ``SELECT 1``) before it is handed out.
PING_IDLE_S = 1.0
_IDLE_SINCE = "farm_idle_since"


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection before use when it sat unused for :data:`PING_IDLE_S` or more.

    SQLAlchemy's ``pool_pre_ping`` tests it before every use: one more round trip on every call of
    a producer. A connection used a moment ago is alive (or its failure is that call's to report,
    as it would be a moment later); one that sat in the pool may have outlived a database restart.
    A failed test makes the pool connect anew (SQLAlchemy's pessimistic disconnect handling).
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        if since is None or time.monotonic() - since < PING_IDLE_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise sa_exc.DisconnectionError(f"pooled connection lost: {exc}") from exc
        if not alive:
            raise sa_exc.DisconnectionError("pooled connection lost")


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (once: the mode is stored in the file).

    Changing the journal mode needs the file to itself and SQLite answers "database is locked"
    at once, without its busy handler, while another connection uses it: a fresh embedded ledger
    opened by several processes at the same moment. So the switch is retried until the busy
    timeout, and skipped when another connection already made it.
    """
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(WAL_SWITCH_RETRY_S)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own transaction
        # handling defers BEGIN and does not run DDL in transactions).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            _use_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# -- migrations --------------------------------------------------------------------------------


def libpq_url(url: str) -> str:
    """A SQLAlchemy Postgres URL as a libpq connection URI (what ``psycopg.connect`` takes)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Any:
    """Alembic's ``Config``, built in code; ``connection`` (preferred) or ``url`` is the target."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal % must be doubled.
        cfg.set_main_option("sqlalchemy.url", normalize_url(url).render_as_string(hide_password=False)
                            .replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revisions() -> tuple[str, ...]:
    """The head revision(s) of the migration scripts (exactly one in a healthy tree)."""
    from alembic.script import ScriptDirectory

    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for a database never migrated).

    An SQLite file that does not exist yet is not created by asking.
    """
    from alembic.runtime.migration import MigrationContext

    path = sqlite_path(engine.url)
    if path is not None and not path.exists():
        return None
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


#: One applied migration step: (from revision, to revision); None is the empty database.
Step = tuple[str | None, str | None]


def _migrate(engine: Engine, revision: str, *, up: bool) -> list[Step]:
    from alembic import command

    steps: list[Step] = []

    def record(*, step: Any, **_kw: Any) -> None:
        source, destination = step.source_revision_ids, step.destination_revision_ids
        steps.append((source[0] if source else None, destination[0] if destination else None))

    with _MIGRATION_LOCK, engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        cfg = alembic_config(conn)
        cfg.attributes["on_version_apply"] = record
        (command.upgrade if up else command.downgrade)(cfg, revision)
        conn.commit()
    return steps


def upgrade(engine: Engine, revision: str = "head") -> list[Step]:
    """Migrate the database up to ``revision``.

    Returns the steps this call applied (none when another process got there first).
    """
    ensure_sqlite_dir(engine.url)
    return _migrate(engine, revision, up=True)


def downgrade(engine: Engine, revision: str) -> list[Step]:
    """Migrate the database down to ``revision`` (``"base"``: no tables at all)."""
    return _migrate(engine, revision, up=False)


def schema_diff(engine: Engine) -> list[Any]:
    """Differences between the database's schema and the models (empty when they agree)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from farm.ledger.models import metadata

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
        return list(compare_metadata(ctx, metadata))
