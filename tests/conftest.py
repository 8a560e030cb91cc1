"""Shared fixtures: throwaway ledger databases.

* ``pg_url`` — a fresh Postgres database migrated to head (copied from a session template);
* ``pg_empty_url`` — a fresh, empty Postgres database;
* ``sqlite_url`` — a fresh SQLite file migrated to head; ``sqlite_empty_url`` — one not created yet.

Postgres fixtures FAIL when the server is unreachable, unless ``FARM_TEST_ALLOW_NO_PG=1`` (then
they skip). Every test that uses one is marked ``postgres`` automatically. See ``tests/pg.py``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pg
import psycopg
import pytest

from farm.ledger import db

POSTGRES_FIXTURE = "pg_admin"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if POSTGRES_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


def _migrate(url: str) -> None:
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[pg.PgAdmin]:
    try:
        admin = pg.PgAdmin()
    except psycopg.OperationalError as exc:
        message = (
            f"Postgres unreachable at {pg.admin_url()} ({exc}). Start it, point {pg.ADMIN_URL_ENV} "
            f"at one, or set {pg.ALLOW_NO_PG_ENV}=1 to skip Postgres tests."
        )
        if pg.allow_no_pg():
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    try:
        yield admin
    finally:
        admin.close()


@pytest.fixture(scope="session")
def pg_template(pg_admin: pg.PgAdmin) -> Iterator[str]:
    """Name of a session-wide template database migrated with ``alembic upgrade head``."""
    name = pg_admin.create(pg.TEMPLATE_PREFIX)
    _migrate(pg.database_url(name))  # the engine is disposed: nobody stays connected to it
    yield name
    pg_admin.drop(name)


@pytest.fixture
def pg_url(pg_admin: pg.PgAdmin, pg_template: str) -> Iterator[str]:
    name = pg_admin.create(pg.DATABASE_PREFIX, template=pg_template)
    yield pg.database_url(name)
    pg_admin.drop(name)


@pytest.fixture
def pg_empty_url(pg_admin: pg.PgAdmin) -> Iterator[str]:
    name = pg_admin.create(pg.DATABASE_PREFIX)
    yield pg.database_url(name)
    pg_admin.drop(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "ledger.sqlite3"
    _migrate(f"sqlite:///{path}")  # disposing checkpoints the WAL: the file alone is complete
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "ledger.sqlite3"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def sqlite_empty_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'empty' / 'ledger.sqlite3'}"
