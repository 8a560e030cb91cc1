"""``GET /metrics``: Prometheus text computed from the real ledger and the private Redis."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from api_helpers import PrivateRedis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from farm.ledger import Ledger
from farm.ledger.types import utcnow
from farm.metrics import METRIC_NAMES, WORKER_STALE_S, quantile

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: TestClient) -> Samples:
    r = http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    with Ledger(pg_url) as gateway:
        yield gateway


def finish(ledger: Ledger, job_id: str, *, render_s: float | None, fail: bool = False) -> None:
    assert ledger.claim(job_id, worker_host="w", worker_device="cpu", lease_s=60) is not None
    if fail:
        ledger.record_failure(job_id, error_type="Boom", error_message="boom", retry=False)
        return
    timings = {} if render_s is None else {"render_s": render_s}
    ledger.record_success(
        job_id, output_uri="file:///nowhere/video.mp4", file_sha256="0" * 64, frames_sha256="1" * 64,
        effective_params={}, weights_fingerprint="fp", env_fingerprint={}, timings=timings,
    )


def test_metrics_from_the_ledger_and_the_broker(http: TestClient, ledger: Ledger, pg_url: str) -> None:
    ids = [http.post("/v1/jobs", json={"prompt": f"fox {i}", "seed": i}).json()["job_ids"][0] for i in range(5)]
    http.post("/v1/jobs", json={"prompt": "batch fox", "seed": 1, "priority": "batch"})
    for job_id, seconds in zip(ids[:3], (1.0, 2.0, 4.0), strict=True):
        finish(ledger, job_id, render_s=seconds)
    finish(ledger, ids[3], render_s=None, fail=True)
    ledger.worker_seen("farm-gpu0@node1", host="node1", device="cuda:0", pid=11, state="circuit_open",
                       consecutive_failures=3)
    ledger.worker_seen("farm-gpu1@node1", host="node1", device="cuda:1", pid=12, state="busy")
    old = utcnow() - timedelta(seconds=WORKER_STALE_S + 60)
    with Ledger(pg_url, clock=lambda: old) as past:
        past.worker_seen("farm-gpu2@node2", host="node2", device="cuda:0", pid=13, state="idle")

    m = scrape(http)
    assert value(m, "farm_ledger_up") == 1 and value(m, "farm_broker_up") == 1
    assert value(m, "farm_jobs", status="queued", priority="interactive") == 1
    assert value(m, "farm_jobs", status="queued", priority="batch") == 1
    assert value(m, "farm_jobs", status="succeeded", priority="interactive") == 3
    assert value(m, "farm_jobs", status="failed", priority="interactive") == 1
    assert value(m, "farm_jobs_finished_total", status="succeeded", priority="interactive") == 3
    assert value(m, "farm_jobs_finished_total", status="failed", priority="interactive") == 1
    # the messages of the claimed jobs are still in the lists: a list's length is what Redis holds
    assert value(m, "farm_queue_depth", queue="farm.interactive.tiny", priority="interactive", model="tiny") == 5
    assert value(m, "farm_queue_depth", queue="farm.batch.tiny", priority="batch", model="tiny") == 1
    assert value(m, "farm_queue_depth", queue="farm.batch.tiny-dense", priority="batch", model="tiny-dense") == 0
    assert value(m, "farm_broker_unacked_messages") == 0
    assert value(m, "farm_oldest_queued_job_age_seconds", priority="interactive") > 0
    assert value(m, "farm_workers", state="circuit_open") == 1
    assert value(m, "farm_workers", state="busy") == 1
    assert value(m, "farm_workers", state="idle") == 0  # the idle one is stale
    assert value(m, "farm_workers_stale") == 1
    assert value(m, "farm_worker_state", worker="farm-gpu0@node1", device="cuda:0", state="circuit_open") == 1
    assert value(m, "farm_worker_consecutive_failures", worker="farm-gpu0@node1") == 3
    assert value(m, "farm_worker_seconds_since_seen", worker="farm-gpu2@node2") > WORKER_STALE_S
    assert value(m, "farm_recent_renders", model="tiny") == 3
    assert value(m, "farm_recent_render_seconds", model="tiny", quantile="0.5") == 2.0
    assert value(m, "farm_recent_render_seconds", model="tiny", quantile="1") == 4.0
    exported = {name for name, _ in m} | {name.removesuffix("_total") for name, _ in m}
    assert set(METRIC_NAMES) <= exported | {"farm_jobs_finished_total"}


def test_broker_down_is_reported_not_an_error(http: TestClient, redis_server: PrivateRedis) -> None:
    redis_server.stop()
    m = scrape(http)
    assert value(m, "farm_broker_up") == 0
    assert value(m, "farm_ledger_up") == 1
    assert not any(name == "farm_queue_depth" for name, _ in m)


def test_metrics_need_the_token(anon: TestClient) -> None:
    r = anon.get("/metrics")
    assert r.status_code == 401
    assert "farm_jobs" not in r.text


def test_quantiles() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert quantile(values, 0.5) == 2.0
    assert quantile(values, 0.9) == 4.0
    assert quantile(values, 1.0) == 4.0
    assert quantile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        quantile([], 0.5)
