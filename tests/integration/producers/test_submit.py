"""Submitting.

The ledger row, exactly one wake-up message in the right queue, seed strategies, idempotency
keys, and manifest batches (idempotent, in manifest order).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from producer_helpers import Broker, RunFarm, count_rows, write_manifest

from farm.client import Client
from farm.client.core import idempotency_digest
from farm.ledger import JobStatus, Ledger
from farm.seeds import seed_from_prompt


def test_submit_writes_the_row_then_one_message_in_the_interactive_queue(
    client: Client, ledger: Ledger, broker: Broker
) -> None:
    [job_id] = client.submit("a red fox running through snow", seed=7, steps=4, tags={"shot": "a"})
    job = ledger.get_job(job_id)
    assert job.status is JobStatus.QUEUED
    assert job.prompt == "a red fox running through snow" and job.seed == 7 and job.seed_strategy == "explicit"
    assert job.priority == "interactive" and job.model_name == "tiny"
    assert job.params["steps"] == 4 and job.tags == {"shot": "a"}
    assert job.no_cache is False and job.cache_of_job_id is None and job.batch_id is None
    assert job.enqueued_at is not None  # sent after the commit, and recorded
    assert broker.job_ids("farm.interactive") == [job_id]
    assert broker.job_ids("farm.batch") == []
    [created] = [e for e in ledger.events(job_id) if e.kind == "created"]
    assert created.at <= job.enqueued_at


def test_batch_priority_goes_to_the_batch_queue(client: Client, ledger: Ledger, broker: Broker) -> None:
    [job_id] = client.submit("a paper boat", seed=3, priority="batch")
    assert ledger.get_job(job_id).priority == "batch"
    assert broker.job_ids("farm.batch") == [job_id]
    assert broker.job_ids("farm.interactive") == []


def test_seed_strategies_are_recorded(client: Client, ledger: Ledger, broker: Broker) -> None:
    [derived] = client.submit("a lighthouse at dusk", seed_from_prompt=True, salt="v2")
    [drawn] = client.submit("a lighthouse at dusk")
    job = ledger.get_job(derived)
    assert (job.seed, job.seed_strategy) == (seed_from_prompt("a lighthouse at dusk", "v2"), "prompt")
    assert ledger.get_job(drawn).seed_strategy == "random"
    assert sorted(broker.job_ids("farm.interactive")) == sorted([derived, drawn])


def test_sweep_submits_one_job_per_seed(client: Client, ledger: Ledger, broker: Broker) -> None:
    sub = client.submit_detailed("a kite over dunes", sweep=(1, 2), priority="batch")
    jobs = [ledger.get_job(j) for j in sub.job_ids]
    assert [j.seed for j in jobs] == [0, 1, 2, 3] == sub.seeds  # 1-2 < 0 is skipped
    assert {j.seed_strategy for j in jobs} == {"sweep"} and sub.seed_strategy == "sweep"
    assert sub.enqueued == 4 and sorted(broker.job_ids("farm.batch")) == sorted(sub.job_ids)


def test_idempotency_key_returns_the_same_jobs(client: Client, ledger: Ledger, broker: Broker) -> None:
    first = client.submit_detailed("a glass of water", idempotency_key="req-42", sweep=(10, 1))
    again = client.submit_detailed("a glass of water", idempotency_key="req-42", sweep=(10, 1))
    other_args = client.submit_detailed("something else", idempotency_key="req-42", seed=1)
    assert first.created and not again.created and not other_args.created
    assert first.job_ids == again.job_ids == other_args.job_ids and len(first.job_ids) == 3
    assert again.enqueued == 0 and other_args.enqueued == 0
    assert len(ledger.list_jobs(limit=100)) == 3
    assert sorted(broker.job_ids("farm.interactive")) == sorted(first.job_ids)  # sent once
    batch = ledger.find_batch_by_digest(idempotency_digest("req-42"))
    assert batch is not None and batch.job_count == 3
    # A random seed is drawn once: the repeat returns the recorded one.
    a = client.submit_detailed("a dune", idempotency_key="req-random")
    b = client.submit_detailed("a dune", idempotency_key="req-random")
    assert a.seeds == b.seeds and a.job_ids == b.job_ids


def test_idempotency_key_under_concurrent_producers(settings: object, ledger: Ledger, broker: Broker) -> None:
    results: list[list[str]] = []
    barrier = threading.Barrier(4)

    def produce() -> None:
        with Client.from_settings(settings) as c:  # type: ignore[arg-type]
            barrier.wait()
            results.append(c.submit("a windmill", seed=5, idempotency_key="same-request"))

    threads = [threading.Thread(target=produce) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 4 and all(r == results[0] for r in results)
    assert len(ledger.list_jobs()) == 1
    # Each producer sends what is not marked enqueued yet, so racing producers may all send it:
    # harmless (one worker claims the job, the others drop their message); never zero.
    sent = broker.job_ids("farm.interactive")
    assert set(sent) == set(results[0]) and 1 <= len(sent) <= 4


def test_cli_submit_prints_ids_and_records(run_farm: RunFarm, ledger: Ledger, broker: Broker) -> None:
    proc = run_farm("submit", "a red fox", "--seed", "9", "--steps", "4", "--tag", "campaign=spring",
                    "--priority", "batch")
    assert proc.returncode == 0, proc.stderr
    [job_id] = proc.stdout.split()
    job = ledger.get_job(job_id)
    assert (job.seed, job.params["steps"], job.tags, job.priority) == (9, 4, {"campaign": "spring"}, "batch")
    assert broker.job_ids("farm.batch") == [job_id]
    assert "1 enqueued" in proc.stderr
    swept = run_farm("submit", "a red fox", "--sweep", "100:1", "--json")
    payload = json.loads(swept.stdout)
    assert swept.returncode == 0 and payload["seeds"] == [99, 100, 101] and payload["enqueued"] == 3
    assert sorted(broker.job_ids("farm.interactive")) == sorted(payload["job_ids"])


def many_items(n: int) -> list[dict[str, object]]:
    return [{"prompt": f"shot {i} of a lighthouse", "seeds": [i, i + 1000]} for i in range(n)]


def test_batch_is_written_in_manifest_order_and_sent_once(
    client: Client, ledger: Ledger, broker: Broker, tmp_path: Path
) -> None:
    path = write_manifest(tmp_path / "day.jsonl", many_items(30), name="lighthouse", defaults={"steps": 4})
    sub = client.submit_batch(path)
    assert sub.created and sub.job_count == 60 and sub.enqueued == 60 and sub.name == "lighthouse"
    jobs = ledger.batch_jobs(sub.batch_id)
    assert [j.batch_index for j in jobs] == list(range(60))
    assert [(j.prompt, j.seed) for j in jobs[:3]] == [
        ("shot 0 of a lighthouse", 0), ("shot 0 of a lighthouse", 1000), ("shot 1 of a lighthouse", 1),
    ]
    assert all(j.priority == "batch" and j.enqueued_at is not None for j in jobs)
    assert broker.job_ids("farm.batch") == [j.id for j in jobs]  # sent in manifest order
    assert broker.lengths()["farm.interactive"] == 0


def test_same_manifest_twice_is_one_batch(client: Client, ledger: Ledger, broker: Broker, tmp_path: Path,
                                          pg_url: str) -> None:
    path = write_manifest(tmp_path / "day.jsonl", many_items(10))
    first = client.submit_batch(path)
    # Reformatted (YAML, other key order): the same manifest content, so the same batch.
    yaml_path = tmp_path / "day.yaml"
    yaml_path.write_text("items:\n" + "".join(f"  - {{seeds: [{i}, {i + 1000}], prompt: 'shot {i} of a lighthouse'}}\n"
                                             for i in range(10)), encoding="utf-8")
    again = client.submit_batch(yaml_path)
    assert again.batch_id == first.batch_id and not again.created and again.enqueued == 0
    assert count_rows(pg_url, "jobs") == 20 and count_rows(pg_url, "batches") == 1
    assert broker.lengths()["farm.batch"] == 20
    # --no-cache is a batch of its own (every job renders), itself idempotent.
    forced = client.submit_batch(path, no_cache=True)
    forced_again = client.submit_batch(path, no_cache=True)
    assert forced.created and forced.batch_id != first.batch_id
    assert forced_again.batch_id == forced.batch_id and not forced_again.created
    assert all(j.no_cache for j in ledger.batch_jobs(forced.batch_id))
    assert count_rows(pg_url, "jobs") == 40


def test_identical_jobs_in_a_later_batch_follow_the_queued_ones(
    client: Client, ledger: Ledger, broker: Broker, tmp_path: Path
) -> None:
    first = client.submit_batch(write_manifest(tmp_path / "a.jsonl", many_items(3), name="a"))
    second = client.submit_batch(write_manifest(tmp_path / "b.jsonl", many_items(3), name="b"))
    assert second.created and second.enqueued == 0  # identical jobs queued: followers, not sent
    leaders = {j.job_key: j.id for j in ledger.batch_jobs(first.batch_id)}
    for job in ledger.batch_jobs(second.batch_id):
        assert job.follower and job.cache_of_job_id == leaders[job.job_key]
    assert broker.lengths()["farm.batch"] == 6


def test_cli_batch_prints_the_batch_id(run_farm: RunFarm, ledger: Ledger, broker: Broker, tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "day.jsonl", many_items(5), name="cli-day")
    proc = run_farm("batch", str(path))
    assert proc.returncode == 0, proc.stderr
    batch_id = proc.stdout.strip()
    assert ledger.get_batch(batch_id).name == "cli-day"
    assert "10 job(s), new batch; 10 enqueued now" in proc.stderr
    again = run_farm("batch", str(path), "--json")
    payload = json.loads(again.stdout)
    assert payload["batch_id"] == batch_id and payload["created"] is False and payload["enqueued"] == 0
    assert broker.lengths()["farm.batch"] == 10
