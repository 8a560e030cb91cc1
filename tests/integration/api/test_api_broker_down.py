"""The API fails fast: with the broker down it answers within 2 s, and says whether it is ready.

The app runs with farm's default retry settings (no test shortcuts): ``FARM_API_SEND_TIMEOUT_S``
bounds how long a request tries the broker. A stopped private redis-server is the broker that is
down; a closed port is the ledger that is down.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import AUTH, TOKEN, queued_job_ids
from fastapi.testclient import TestClient
from private_postgres import PrivatePostgres
from private_redis import PrivateRedis

from farm.api.app import create_app
from farm.ledger import JobStatus, Ledger
from farm.queue.enqueue import reap
from farm.settings import DEFAULT_API_SEND_TIMEOUT_S, Settings

#: What the issue asks of a request while the broker is down.
ANSWER_WITHIN_S = 2.0


@pytest.fixture
def settings(pg_url: str, redis_server: PrivateRedis, tmp_path: Path) -> Settings:
    """Production-like settings: the default retries and send timeouts."""
    return Settings(data_dir=tmp_path / "data", output_dir=tmp_path / "outputs", database_url=pg_url,
                    broker_url=redis_server.url, api_token=TOKEN)


@pytest.fixture
def app_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield client


def timed_post(client: TestClient, path: str, **kwargs: object) -> tuple[object, float]:
    started = time.monotonic()
    response = client.post(path, **kwargs)  # type: ignore[arg-type]
    return response, time.monotonic() - started


def test_ready_when_ledger_and_broker_answer(app_client: TestClient, settings: Settings) -> None:
    with TestClient(create_app(settings)) as anonymous:  # no token: an orchestrator's probe
        r = anonymous.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready", "ledger": "ok", "broker": "ok"}
    assert "/readyz" in app_client.get("/openapi.json").json()["paths"]


def test_broker_down_accepted_jobs_answer_202_fast_and_are_sent_later(
    app_client: TestClient, redis_server: PrivateRedis, settings: Settings, pg_url: str, tmp_path: Path,
) -> None:
    assert settings.api_send_timeout_s == DEFAULT_API_SEND_TIMEOUT_S < ANSWER_WITHIN_S
    redis_server.stop()

    r, took_s = timed_post(app_client, "/v1/jobs", json={"prompt": "a fox at dawn", "seed": 5})
    assert took_s < ANSWER_WITHIN_S, took_s
    assert r.status_code == 202, r.text  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    assert (body["created"], body["enqueued"], body["not_sent"]) == (True, 0, 1)
    [job_id] = body["job_ids"]

    manifest = "defaults: {model: tiny, steps: 2}\nitems:\n  - {prompt: a red car, seeds: [1, 2, 3]}\n"
    b, took_s = timed_post(app_client, "/v1/batches", content=manifest, headers={"Content-Type": "application/yaml"})
    assert took_s < ANSWER_WITHIN_S, took_s
    assert b.status_code == 202, b.text  # type: ignore[attr-defined]
    assert b.json()["not_sent"] == 3 and b.json()["enqueued"] == 0  # type: ignore[attr-defined]

    ready = app_client.get("/readyz")
    assert ready.status_code == 503 and ready.headers["Retry-After"]
    assert ready.json() == {"status": "not ready", "ledger": "ok", "broker": "unavailable"}
    assert "127.0.0.1" not in ready.text

    with Ledger(pg_url) as ledger:
        job = ledger.get_job(job_id)
        assert job.status is JobStatus.QUEUED and job.enqueued_at is None  # recorded, nothing lost
        (tmp_path / "again").mkdir()
        back = PrivateRedis(tmp_path / "again", port=redis_server.port)  # the broker comes back
        try:
            report = reap(ledger, settings)
            assert job_id in report.enqueued and len(report.enqueued) == 4
            assert queued_job_ids(back, "farm.interactive") == [job_id]
        finally:
            back.stop()


def test_ledger_down_nothing_accepted_answers_503_with_retry_after(
    private_pg: PrivatePostgres, redis_server: PrivateRedis, tmp_path: Path,
) -> None:
    """The ledger stops under a running API: nothing can be recorded, so 503 with Retry-After (never a 500)."""
    from farm.ledger import db

    engine = db.make_engine(private_pg.url)
    try:
        db.upgrade(engine)
    finally:
        engine.dispose()
    settings = Settings(data_dir=tmp_path / "data", output_dir=tmp_path / "outputs", database_url=private_pg.url,
                        broker_url=redis_server.url, api_token=TOKEN)
    with TestClient(create_app(settings), headers=AUTH) as client:
        assert client.post("/v1/jobs", json={"prompt": "a fox", "seed": 1}).status_code == 201
        private_pg.stop("immediate")
        r, took_s = timed_post(client, "/v1/jobs", json={"prompt": "a fox", "seed": 2})
        assert r.status_code == 503 and r.headers["Retry-After"], r.text  # type: ignore[attr-defined]
        print(f"\n[numbers] ledger down: POST /v1/jobs answered 503 in {took_s:.2f} s")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json() == {"status": "not ready", "ledger": "unavailable",
                                                             "broker": "ok"}
        private_pg.start()
        assert client.get("/readyz").status_code == 200
