"""Shared fixtures of every tier: throwaway ledger databases and a private Redis.

* ``pg_url`` — a fresh Postgres database migrated to head (copied from a session template);
* ``pg_empty_url`` — a fresh, empty Postgres database;
* ``sqlite_url`` — a fresh SQLite file migrated to head; ``sqlite_empty_url`` — one not created yet;
* ``redis_server`` — a private ``redis-server`` per test (:class:`private_redis.PrivateRedis`); the
  producer suite overrides it with one per module, the farm fault tests with a restartable AOF one;
* ``moto_s3`` — a real S3-compatible server per test (moto in server mode, :class:`moto_s3.MotoS3`)
  with the bucket created;
* ``private_pg`` — a private Postgres cluster a fault test may stop and start (``private_postgres``).

Postgres fixtures FAIL when the server is unreachable, unless ``FARM_TEST_ALLOW_NO_PG=1`` (then
they skip). Every test that uses one is marked ``postgres`` automatically. See ``tests/pg.py``.

Tiers (one folder each, marked automatically by folder: ``pytest -m unit`` etc.): ``unit`` (no
services, no worker processes), ``integration`` (Postgres, a private Redis, the tiny model
in-process), ``acceptance`` (real ``farm`` processes), ``migration``, ``gpu`` (opt-in). Shared helper
modules (``pg``, ``private_redis``, ``api_helpers``, ``engine_helpers``) live here in ``tests/``
(on ``pythonpath``); a helper used by one folder only lives in that folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pg
import psycopg
import pytest
from moto_s3 import MotoS3
from private_postgres import private_pg  # noqa: F401  (a fixture: a private Postgres cluster for fault tests)
from private_redis import PrivateRedis

from farm.ledger import db

POSTGRES_FIXTURE = "pg_admin"
#: Fixtures that start or reach a service: a unit test may use none of them.
SERVICE_FIXTURES = (POSTGRES_FIXTURE, "redis_server", "moto_s3")
TESTS_DIR = Path(__file__).resolve().parent
#: The tiers: the first folder under tests/ names a test's tier (and its marker).
TIERS = ("unit", "integration", "acceptance", "migration", "gpu")


def tier_of(item: pytest.Item) -> str | None:
    try:
        parts = item.path.resolve().relative_to(TESTS_DIR).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if POSTGRES_FIXTURE in fixtures:
            item.add_marker(pytest.mark.postgres)
        tier = tier_of(item)
        if tier is None:
            continue
        item.add_marker(getattr(pytest.mark, tier))
        services = [name for name in SERVICE_FIXTURES if name in fixtures]
        if tier == "unit" and services:
            raise pytest.UsageError(
                f"{item.nodeid} uses {', '.join(services)}: unit tests need no services; "
                "move it to tests/integration/"
            )


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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private ``redis-server`` on a free loopback port, started empty, stopped at the end."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = PrivateRedis(workdir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto_s3(tmp_path: Path) -> Iterator[MotoS3]:
    """A real S3-compatible server of the test's own: moto in server mode, a subprocess on a free loopback port."""
    server = MotoS3(tmp_path / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
