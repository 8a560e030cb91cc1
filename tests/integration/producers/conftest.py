"""Producer-suite fixtures.

The REAL Postgres (a fresh migrated database per test, ``pg_url``) and a PRIVATE ``redis-server``
per test module on a free port (never the shared one, never FLUSHALL: each test deletes only the
farm's two queue keys on its own server).

* ``broker`` — the private Redis: ``lengths()``, ``job_ids(queue)`` (the job ids of the messages
  waiting, decoded from the Celery messages), ``take(queue)`` (pop them, as a worker would);
* ``settings`` / ``client`` — farm settings and a :class:`farm.client.Client` on both;
* ``work`` — a stand-in worker: pops every waiting message and runs the jobs through the real
  :class:`farm.worker.runner.JobRunner` on the built-in tiny model, in-process on the CPU;
* ``farm_env`` / ``run_farm`` — the ``farm`` console script as a subprocess on the same services.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from producer_helpers import FARM, Broker, PrivateRedis, RunFarm, Work, run_jobs

from farm.client import Client
from farm.ledger import Ledger
from farm.settings import Settings


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def broker(redis_server: PrivateRedis) -> Broker:
    b = Broker(redis_server)
    b.clear()
    return b


@pytest.fixture
def settings(pg_url: str, broker: Broker, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=pg_url,
        broker_url=broker.url,
        retry_count=1,
        retry_base_s=0.01,
        retry_cap_s=0.05,
        torch_threads=1,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client.from_settings(settings) as c:
        yield c


@pytest.fixture
def ledger(client: Client) -> Ledger:
    return client.ledger


@pytest.fixture(scope="session")
def engine() -> Any:
    from farm.engine.render import Engine

    return Engine(device="cpu", offload="none", torch_threads=1)


@pytest.fixture
def work(broker: Broker, ledger: Ledger, settings: Settings, engine: Any) -> Work:
    """Pop every waiting message and render those jobs (a one-shot stand-in worker)."""

    def run() -> list[Any]:
        return run_jobs(ledger, settings, engine, broker.take())

    return run


@pytest.fixture
def farm_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(
        FARM_DATA_DIR=str(settings.data_dir),
        FARM_DATABASE_URL=str(settings.database_url),
        FARM_BROKER_URL=str(settings.broker_url),
        FARM_RETRY_COUNT="1",
        FARM_RETRY_BASE_S="0.01",
        FARM_RETRY_CAP_S="0.05",
        PYTHONHASHSEED="1",
    )
    return env


@pytest.fixture
def run_farm(farm_env: dict[str, str]) -> RunFarm:
    def run(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FARM, *args], env={**farm_env, **env}, capture_output=True, text=True,
                              timeout=timeout)

    return run
