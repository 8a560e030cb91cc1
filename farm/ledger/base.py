"""The ledger gateway's foundation.

The engine, transactions with farm's error translation, the clock, and the schema (migrations).
:class:`farm.ledger.manager.Ledger` builds on it.

Errors: connection and operational failures become :class:`~farm.errors.LedgerUnavailable`
(transient); a database without farm's tables gives :class:`~farm.errors.SchemaOutOfDate`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Self

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from farm.errors import FarmError, LedgerUnavailable, SchemaOutOfDate
from farm.ledger import db
from farm.ledger.types import utcnow
from farm.settings import Settings, redacted_url

_UNDEFINED_TABLE_SQLSTATE = "42P01"


def _missing_table(error: sa_exc.DBAPIError) -> bool:
    orig = error.orig
    return "no such table" in str(orig) or getattr(orig, "sqlstate", None) == _UNDEFINED_TABLE_SQLSTATE


class LedgerBase:
    """The connection to the ledger database at ``url`` (any SQLAlchemy URL; SQLite or Postgres).

    ``clock`` returns the current aware UTC time (tests pass a fake one). The constructor does no
    I/O; :meth:`from_settings` also makes sure the schema is usable.
    """

    def __init__(self, url: str, *, echo: bool = False, clock: Callable[[], datetime] | None = None,
                 pre_ping: bool = True):
        self.url = url
        self._engine: Engine = db.make_engine(url, echo=echo, pre_ping=pre_ping)
        #: The same pool, each connection in autocommit (Postgres only): see :meth:`_read`, :meth:`_write_one`.
        self._autocommit: Engine | None = (
            self._engine.execution_options(isolation_level="AUTOCOMMIT")
            if self._engine.dialect.name == "postgresql" else None
        )
        self._clock = clock or utcnow
        #: One kept done-listener between waits (see :meth:`farm.ledger.reads.LedgerReads.listen`).
        self._idle_listener: Any = None
        self._listener_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The ledger the settings name.

        Embedded (SQLite in the data dir): created and migrated to head as needed. Any other URL:
        must already be at head, else :class:`SchemaOutOfDate`.
        """
        ledger = cls(settings.ledger_url, echo=settings.sql_echo)
        try:
            if settings.embedded:
                settings.data_dir.mkdir(parents=True, exist_ok=True)
                ledger.ensure_schema(upgrade=True)
            else:
                ledger.ensure_schema(upgrade=False)
        except BaseException:
            ledger.close()
            raise
        return ledger

    @property
    def display_url(self) -> str:
        """The ledger URL with its password hidden (for logs and messages)."""
        return redacted_url(self.url)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql`` (SQLAlchemy's backend name)."""
        return self._engine.dialect.name

    def close(self) -> None:
        """Close the engine's connections (and the kept done-listener's)."""
        with self._listener_lock:
            listener, self._idle_listener = self._idle_listener, None
        if listener is not None:
            listener.close()
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.display_url!r})"

    def _now(self) -> datetime:
        return self._clock()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Translate driver errors into farm's.

        Unreachable -> LedgerUnavailable (transient), no tables -> SchemaOutOfDate.
        """
        try:
            yield
        except FarmError:
            raise
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.ProgrammingError) as error:
            if _missing_table(error):
                raise SchemaOutOfDate(
                    f"the ledger at {self.display_url} has no farm tables: run `farm db upgrade`"
                ) from error
            if isinstance(error, sa_exc.ProgrammingError):
                raise
            detail = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
            raise LedgerUnavailable(f"ledger {self.display_url} unavailable: {detail}") from error
        except (sa_exc.DisconnectionError, sa_exc.TimeoutError) as error:
            raise LedgerUnavailable(f"ledger {self.display_url} unavailable: {error}") from error

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """Reads.

        Postgres: without a transaction (autocommit). At READ COMMITTED each statement sees its
        own snapshot in a transaction too, so ``BEGIN`` and ``COMMIT`` would only add two round
        trips. SQLite: a read transaction (one snapshot for all its statements).
        """
        if self._autocommit is None:
            with self._guard(), self._engine.connect() as conn, conn.begin():
                yield conn
        else:
            with self._guard(), self._autocommit.connect() as conn:
                yield conn

    @contextmanager
    def _write_one(self) -> Iterator[Connection]:
        """A write that is ONE statement on Postgres, atomic on its own: run without ``BEGIN``/``COMMIT``.

        SQLite (where the same change may take several statements): a write transaction.
        """
        if self._autocommit is None:
            with self._write() as conn:
                yield conn
        else:
            with self._guard(), self._autocommit.connect() as conn:
                yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite: writers queue up front)."""
        with self._guard(), self._engine.connect() as conn:
            conn.execution_options(**{db.WRITE_OPTION: True})
            with conn.begin():
                yield conn

    def current_revision(self) -> str | None:
        """The revision the database is at (None for a database never migrated)."""
        with self._guard():
            return db.current_revision(self._engine)

    @staticmethod
    def head_revision() -> str:
        """The newest revision of the shipped migrations (there must be exactly one head)."""
        heads = db.head_revisions()
        if len(heads) != 1:
            raise RuntimeError(f"the migration scripts have {len(heads)} heads: {heads}")
        return heads[0]

    def upgrade(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Migrate to ``revision``.

        Returns the revisions before and after this call's work (equal when there was
        nothing to do).
        """
        with self._guard():
            steps = db.upgrade(self._engine, revision)
            after = db.current_revision(self._engine)
        return (steps[0][0] if steps else after), after

    def downgrade(self, revision: str) -> tuple[str | None, str | None]:
        """Migrate down to ``revision`` (``"base"`` drops every ledger table)."""
        with self._guard():
            steps = db.downgrade(self._engine, revision)
            after = db.current_revision(self._engine)
        return (steps[0][0] if steps else after), after

    def schema_diff(self) -> list[Any]:
        """Alembic's differences between the database and the models (empty: they agree)."""
        with self._guard():
            return db.schema_diff(self._engine)

    def ensure_schema(self, *, upgrade: bool) -> None:
        """Upgrade to head (``upgrade=True``) or raise :class:`SchemaOutOfDate` unless at head."""
        head = self.head_revision()
        current = self.current_revision()
        if current == head:
            return
        if upgrade:
            self.upgrade("head")
            return
        raise SchemaOutOfDate(
            f"the ledger at {self.display_url} is at revision {current or 'none'}, the code needs "
            f"{head}: run `farm db upgrade`"
        )
