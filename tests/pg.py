"""Throwaway Postgres databases for tests, procrastinate-style.

Once per session a template database ``farm_tpl_<hex>`` is created and migrated to head; each test
gets ``CREATE DATABASE farm_t_<hex> TEMPLATE farm_tpl_<hex>`` (a few tens of milliseconds) and
drops it afterwards. :class:`PgAdmin` only ever drops databases it created itself.

Configuration (environment, read by tests only):

* ``FARM_TEST_PG_ADMIN_URL`` — SQLAlchemy URL of an admin connection to the ``postgres``
  database (default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``);
* ``FARM_TEST_ALLOW_NO_PG=1`` — skip Postgres tests when the server is unreachable (by default
  they fail).
"""

from __future__ import annotations

import os
import secrets

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

ADMIN_URL_ENV = "FARM_TEST_PG_ADMIN_URL"
ALLOW_NO_PG_ENV = "FARM_TEST_ALLOW_NO_PG"
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TEMPLATE_PREFIX = "farm_tpl_"
DATABASE_PREFIX = "farm_t_"
CONNECT_TIMEOUT_S = 5


def admin_url() -> str:
    return os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL


def allow_no_pg() -> bool:
    return os.environ.get(ALLOW_NO_PG_ENV) == "1"


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL as a libpq connection URI (what psycopg.connect takes)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def database_url(name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the admin URL's server."""
    u = make_url(admin_url())
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.set(database=name).render_as_string(hide_password=False)


class PgAdmin:
    """An autocommit admin connection that creates and drops the tests' databases."""

    def __init__(self, url: str | None = None):
        self.url = url or admin_url()
        self._conn = psycopg.connect(libpq_url(self.url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        self._created: list[str] = []

    def create(self, prefix: str = DATABASE_PREFIX, *, template: str = "template0") -> str:
        """Create a database named ``prefix`` + random hex from ``template``; returns its name."""
        if not prefix.startswith("farm_t"):
            raise ValueError(f"test databases are named farm_t*, not {prefix!r}")
        name = f"{prefix}{secrets.token_hex(8)}"
        self._conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        )
        self._created.append(name)
        return name

    def adopt(self, name: str) -> None:
        """Take charge of a database a test created by other means (a command it ran): this admin drops it like its own.

        Only farm_t* names.
        """
        if not name.startswith("farm_t"):
            raise ValueError(f"test databases are named farm_t*, not {name!r}")
        self._created.append(name)

    def drop(self, name: str) -> None:
        """Drop a database this admin created or adopted (anything else is refused)."""
        if name not in self._created:
            raise ValueError(f"refusing to drop {name!r}: not created by this test session")
        self._conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        self._created.remove(name)

    def exists(self, name: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None

    def close(self) -> None:
        for name in list(reversed(self._created)):
            self.drop(name)
        self._conn.close()
