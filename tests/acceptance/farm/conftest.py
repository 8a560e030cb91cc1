"""Fixtures for the farm's fault tests: real processes, a private Redis, real Postgres.

* ``redis_server`` — a private ``redis-server`` on a free port with AOF (``appendfsync always``) in
  a temporary directory, per test; it can be killed and started again on the same port and dir.
  Nothing else's Redis keys or databases are ever touched.
* ``farm_env`` — a :class:`FarmEnv`: the ``FARM_*`` environment for subprocesses (ledger, broker,
  data and output dirs, fault injection, small leases), ``farm worker --device cpu`` subprocesses
  with their logs in files (printed when a test fails), job submission, and bounded waits.

Every wait has a deadline; every process started here is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from farm_harness import FarmEnv, RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def farm_env(
    request: pytest.FixtureRequest, tmp_path: Path, pg_url: str, redis_server: RedisServer
) -> Iterator[FarmEnv]:
    env = FarmEnv(tmp=tmp_path, database_url=pg_url, broker_url=redis_server.url)
    try:
        yield env
    finally:
        env.stop_all()
        failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
        if failed:
            print(f"\n---------- worker logs of {request.node.name} ----------\n{env.logs()}")
        env.close()
