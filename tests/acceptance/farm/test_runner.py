"""The job runner in-process (tiny model, CPU) against a real Postgres ledger.

Cache hits after the model loads, hand-back when told to stop, a lost lease stops the render,
poison isolation in the grouping, transient storage errors retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from farm_harness import SMALL

from farm.errors import StorageError
from farm.ledger import JobRecord, Ledger, NewJob
from farm.queue.enqueue import retrying
from farm.settings import Settings
from farm.spec import parse_spec
from farm.worker.faults import apply_faults
from farm.worker.runner import JobRunner, OutcomeKind

T = TypeVar("T")


@pytest.fixture(scope="module")
def engine() -> Any:
    from farm.engine.render import Engine

    return Engine("cpu", torch_threads=1)


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    with Ledger(pg_url) as led:
        yield led


def new_job(seed: int, *, tags: dict[str, str] | None = None, no_cache: bool = False, **spec: Any) -> NewJob:
    data = {"prompt": f"runner {seed}", "seed": seed, **SMALL, **spec}
    if tags:
        data["tags"] = tags
    return NewJob.from_spec(parse_spec(data), no_cache=no_cache)


def make_runner(ledger: Ledger, engine: Any, tmp_path: Path, **kwargs: Any) -> JobRunner:
    from farm.store.writer import OutputWriter

    defaults: dict[str, Any] = {
        "ledger": ledger, "engine": engine, "store": OutputWriter(tmp_path / "outputs"), "worker_host": "test#1",
        "worker_device": "cpu", "lease_s": 30, "heartbeat_s": 1,
    }
    defaults.update(kwargs)
    return JobRunner(**defaults)


def claim(ledger: Ledger, job_id: str, lease_s: float = 30) -> JobRecord:
    record = ledger.claim(job_id, worker_host="test#1", worker_device="cpu", lease_s=lease_s)
    assert record is not None
    return record


def test_cache_hit_after_the_model_loads(ledger: Ledger, engine: Any, tmp_path: Path) -> None:
    """B was queued before A rendered the same job key (no dedup then).

    Once the worker has loaded the model and knows the weights, B is answered from A's output
    without rendering.
    """
    [b] = ledger.add_jobs([new_job(1)])
    [a] = ledger.add_jobs([new_job(1, no_cache=True)])  # same key; no_cache: a normal job, not a follower
    runner = make_runner(ledger, engine, tmp_path)
    [done] = runner.run([a])
    assert done.outcome == OutcomeKind.SUCCEEDED
    assert ledger.model_fingerprint("tiny") == done.record.weights_fingerprint  # type: ignore[union-attr]
    [hit] = runner.run_claimed([claim(ledger, b)])
    assert hit.outcome == OutcomeKind.CACHE_HIT
    job_b = ledger.get_job(b)
    assert job_b.status.value == "succeeded" and job_b.cache_of_job_id == a
    assert job_b.output_uri == ledger.get_job(a).output_uri
    assert [e.kind for e in ledger.events(b)][-1] == "cache-hit"
    # no_cache jobs always render
    [c] = ledger.add_jobs([new_job(1, no_cache=True)])
    [again] = runner.run([c])
    assert again.outcome == OutcomeKind.SUCCEEDED and ledger.get_job(c).cache_of_job_id is None


def test_stop_hands_the_jobs_back(ledger: Ledger, engine: Any, tmp_path: Path) -> None:
    """Told to stop (a worker's shutdown deadline) in the middle of a render.

    The render stops at its next step and every claimed job goes back to queued, its attempt not
    counted.
    """
    import threading

    ids = ledger.add_jobs([new_job(10, tags={"fault": "sleep:20"}), new_job(11), new_job(12, height=48)])
    runner = make_runner(ledger, engine, tmp_path, phase_batch=2, before_render=apply_faults)
    claimed = [claim(ledger, i) for i in ids]
    timer = threading.Timer(1.0, runner.stop.set)
    timer.start()
    started = time.monotonic()
    try:
        outcomes = runner.run_claimed(claimed)  # group [10, 11] is rendering; group [12] not started
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10
    assert [o.outcome for o in outcomes] == [OutcomeKind.RELEASED, OutcomeKind.RELEASED, OutcomeKind.RELEASED]
    for job in [ledger.get_job(i) for i in ids]:
        assert job.status.value == "queued" and job.attempts == 0 and job.enqueued_at is None
        assert [e.kind for e in ledger.events(job.id)][-1] == "released"


def test_a_lost_lease_stops_the_render(ledger: Ledger, engine: Any, tmp_path: Path) -> None:
    """The job is cancelled while its worker sleeps in the render.

    The next heartbeat is refused, the render stops early, nothing is recorded over the
    cancellation.
    """
    [job_id] = ledger.add_jobs([new_job(20, tags={"fault": "sleep:20"})])
    runner = make_runner(ledger, engine, tmp_path, before_render=apply_faults)
    record = claim(ledger, job_id)
    ledger.cancel(job_id)
    started = time.monotonic()
    [outcome] = runner.run_claimed([record])
    assert time.monotonic() - started < 10
    assert outcome.outcome == OutcomeKind.CANCELLED
    job = ledger.get_job(job_id)
    assert job.status.value == "cancelled" and job.output_uri is None


def test_retried_jobs_render_alone(ledger: Ledger, engine: Any, tmp_path: Path) -> None:
    runner = make_runner(ledger, engine, tmp_path, phase_batch=3)
    ids = ledger.add_jobs([new_job(s) for s in (30, 31, 32, 33, 34)])
    records = [claim(ledger, i) for i in ids]
    records[1] = replace(records[1], attempts=2)  # attempted before: maybe a poison job
    groups = runner._groups(records)
    assert [[r.id for r in g] for g in groups] == [[ids[0], ids[2], ids[3]], [ids[4]], [ids[1]]]


def test_transient_storage_errors_are_retried(ledger: Ledger, engine: Any, tmp_path: Path) -> None:
    from farm.store.writer import OutputWriter

    store = OutputWriter(tmp_path / "outputs")
    calls: list[int] = []

    class FlakyStore:
        def put_render(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise StorageError("disk hiccup")
            return store.put_render(*args, **kwargs)

    settings = Settings(data_dir=tmp_path, retry_base_s=0.01, retry_cap_s=0.02)

    def retry(what: str, fn: Callable[[], T], *, durable: bool = False) -> T:
        return retrying(settings, what=what)(fn)

    runner = make_runner(ledger, engine, tmp_path, store=FlakyStore(), retry=retry)
    [job_id] = ledger.add_jobs([new_job(40)])
    [outcome] = runner.run([job_id])
    assert outcome.outcome == OutcomeKind.SUCCEEDED and len(calls) == 2
    assert [e.kind for e in ledger.events(job_id)] == ["created", "claimed", "succeeded"]
