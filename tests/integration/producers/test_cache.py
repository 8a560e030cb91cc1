"""Dedup at submission.

A job identical to a succeeded one is answered from the cache without a message (and fast);
``no_cache`` renders anyway; identical jobs submitted together become one leader (rendered
once) and followers (answered when it succeeds).

Jobs are rendered for real: the messages are popped from the private Redis and run through
:class:`farm.worker.runner.JobRunner` on the built-in tiny model (see ``conftest.work``).
"""

from __future__ import annotations

import json
import statistics
import threading
import time

from producer_helpers import Broker, RunFarm, Work

from farm.client import Client
from farm.ledger import JobStatus, Ledger
from farm.settings import Settings

PROMPT = "a red fox running through snow"
#: Cache hits timed for the reported latency.
LATENCY_SAMPLES = 15
#: A cache hit is one ledger transaction and no render: far below a second.
MAX_MEDIAN_CACHE_HIT_S = 0.5


def rendered(client: Client, work: Work, **spec: object) -> str:
    [job_id] = client.submit(PROMPT, **spec)  # type: ignore[arg-type]
    [outcome] = work()
    assert outcome.job_id == job_id and outcome.outcome == "succeeded", outcome
    return job_id


def test_identical_job_after_success_is_a_cache_hit(
    client: Client, ledger: Ledger, broker: Broker, work: Work, run_farm: RunFarm
) -> None:
    original = ledger.get_job(rendered(client, work, seed=5))
    assert broker.total() == 0

    latencies = []
    for _ in range(LATENCY_SAMPLES):
        started = time.perf_counter()
        [job_id] = client.submit(PROMPT, seed=5, tags={"who": "someone else"})  # tags do not change the key
        hit = ledger.get_job(job_id)
        latencies.append(time.perf_counter() - started)
        assert hit.status is JobStatus.SUCCEEDED and hit.cache_of_job_id == original.id
    assert broker.total() == 0  # answered without a message
    assert hit.output_uri == original.output_uri and hit.frames_sha256 == original.frames_sha256
    assert hit.file_sha256 == original.file_sha256 and hit.timings == {"cache_hit": True}
    assert [e.kind for e in ledger.events(hit.id)] == ["created", "cache-hit"]
    median = statistics.median(latencies)
    print(f"\ncache-hit latency, Python client, submit -> succeeded: median {median * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms over {LATENCY_SAMPLES}")
    assert median < MAX_MEDIAN_CACHE_HIT_S

    started = time.perf_counter()
    proc = run_farm("submit", PROMPT, "--seed", "5", "--json")
    cli_s = time.perf_counter() - started
    payload = json.loads(proc.stdout)
    assert proc.returncode == 0 and payload["first_status"] == "succeeded" and payload["cache_of"] == original.id
    assert payload["enqueued"] == 0 and broker.total() == 0
    print(f"cache-hit latency, `farm submit` process (start-up included): {cli_s * 1000:.0f} ms")


def test_no_cache_renders_again(client: Client, ledger: Ledger, broker: Broker, work: Work) -> None:
    original = ledger.get_job(rendered(client, work, seed=6))
    [job_id] = client.submit(PROMPT, seed=6, no_cache=True)
    job = ledger.get_job(job_id)
    assert job.status is JobStatus.QUEUED and job.no_cache and job.cache_of_job_id is None
    assert broker.job_ids("farm.interactive") == [job_id]
    [outcome] = work()
    again = ledger.get_job(job_id)
    assert outcome.outcome == "succeeded" and again.cache_of_job_id is None and again.attempts == 1
    assert again.frames_sha256 == original.frames_sha256  # same spec, same environment: same frames
    assert not (again.timings or {}).get("cache_hit")


def test_concurrent_identical_submissions_become_leader_and_followers(
    settings: Settings, ledger: Ledger, broker: Broker, work: Work
) -> None:
    producers = 5
    barrier = threading.Barrier(producers)
    ids: list[str] = []
    lock = threading.Lock()

    def produce() -> None:
        with Client.from_settings(settings) as c:
            barrier.wait()
            [job_id] = c.submit(PROMPT, seed=11, priority="batch")
            with lock:
                ids.append(job_id)

    threads = [threading.Thread(target=produce) for _ in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(set(ids)) == producers
    jobs = [ledger.get_job(j) for j in ids]
    leaders = [j for j in jobs if j.cache_of_job_id is None]
    assert len(leaders) == 1
    leader = leaders[0]
    assert all(j.follower and j.cache_of_job_id == leader.id for j in jobs if j is not leader)
    assert broker.job_ids("farm.batch") == [leader.id]  # one message: the leader's

    [outcome] = work()
    assert outcome.job_id == leader.id and outcome.outcome == "succeeded"
    done = [ledger.get_job(j) for j in ids]
    assert all(j.status is JobStatus.SUCCEEDED for j in done)
    rendered_leader = ledger.get_job(leader.id)
    for follower in (j for j in done if j.id != leader.id):
        assert follower.cache_of_job_id == leader.id and follower.output_uri == rendered_leader.output_uri
        assert follower.attempts == 0  # never rendered
