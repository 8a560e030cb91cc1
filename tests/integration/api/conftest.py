"""HTTP API fixtures.

The REAL Postgres (``pg_url``: a fresh migrated database per test) and a PRIVATE
``redis-server`` per test on a free loopback port (never the shared one; nothing is ever
flushed: each test's server starts empty and is stopped at the end).

* ``redis_server`` — the private Redis (``client``, ``url``; defined in ``tests/conftest.py``);
* ``api_settings`` — farm settings on both, outputs under the test's tmp dir, a test token;
* ``http`` — a FastAPI ``TestClient`` on ``create_app(api_settings)`` (start-up and shutdown run),
  sending the bearer token; ``anon`` — the same app without a token.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import AUTH, TOKEN, PrivateRedis
from fastapi.testclient import TestClient

from farm.api.app import create_app
from farm.ledger import Ledger
from farm.settings import Settings


@pytest.fixture
def api_settings(pg_url: str, redis_server: PrivateRedis, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        output_dir=tmp_path / "outputs",
        database_url=pg_url,
        broker_url=redis_server.url,
        api_token=TOKEN,
        retry_count=1,
        retry_base_s=0.01,
        retry_cap_s=0.05,
        torch_threads=1,
    )


@pytest.fixture
def http(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings), headers=AUTH) as client:
        yield client


@pytest.fixture
def anon(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as client:
        yield client


@pytest.fixture(scope="module")
def engine() -> Any:
    """The tiny CPU engine a worker would use (one per test module: loading it costs seconds)."""
    from farm.engine.render import Engine

    return Engine(device="cpu", offload="none", torch_threads=1)


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    """The test database's ledger gateway (to read what the API wrote, or render it as a worker would)."""
    with Ledger(pg_url) as gateway:
        yield gateway
