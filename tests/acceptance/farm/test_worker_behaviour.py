"""How ``farm worker`` behaves.

Phase batching over a 60-job batch, interactive jobs first, pickled and malformed messages refused,
the circuit breaker, SIGTERM. Real processes, a private Redis, a fresh Postgres ledger, the tiny
model on one CPU thread.
"""

from __future__ import annotations

import pickle
import signal
import socket
import time
import uuid
from pathlib import Path

from farm_harness import FARM, FarmEnv, RedisServer, assert_exactly_once, claimed_count, wait_until
from kombu import Connection

from farm.queue.app import make_app
from farm.queue.names import TASK_RENDER, queue_for

#: The queue of the tiny model's batch jobs (the harness's default model).
TINY_BATCH = queue_for("batch.tiny")


def test_sixty_job_batch_two_workers_phase_batched(farm_env: FarmEnv) -> None:
    """60 jobs over 2 workers with expert offload and phase batches of 4.

    60 succeeded, no duplicates, fewer than 2 expert swaps per job.
    """
    farm_env.overrides.update(FARM_OFFLOAD="expert", FARM_PHASE_BATCH="4", FARM_LEASE_S="30")
    farm_env.start_worker("a", wait=False)
    farm_env.start_worker("b")
    farm_env.wait_ready(farm_env.workers[0])
    jobs = farm_env.new_jobs(60, prefix="batch of sixty", batch_index=True)
    started = time.monotonic()
    batch_id, created = farm_env.ledger.create_batch("f" * 64, "sixty", "sixty.yaml", jobs)
    assert created
    pending = farm_env.ledger.jobs_to_enqueue(batch_id=batch_id)
    assert len(pending) == 60
    farm_env.send([job_id for job_id, _ in pending])
    ids = [j.id for j in farm_env.ledger.batch_jobs(batch_id)]
    farm_env.wait_terminal(ids, 300)
    wall = time.monotonic() - started
    done = assert_exactly_once(farm_env, ids)
    assert all(claimed_count(farm_env, j.id) == 1 and j.attempts == 1 for j in done)
    batches = [(j.timings or {})["stats"]["batch"] for j in done]
    swaps = sum(b["swaps"] / b["size"] for b in batches)
    mean_size = sum(b["size"] for b in batches) / len(batches)
    workers = {j.worker_host for j in done}
    assert len(workers) == 2, workers
    assert swaps / len(done) < 2, (swaps, [b["size"] for b in batches])
    assert mean_size > 1.5, [b["size"] for b in batches]
    print(f"\n[numbers] 60-job batch on 2 CPU workers (expert offload, phase batch 4): {wall:.1f} s wall "
          f"from submit (incl. model load), {swaps / len(done):.2f} expert swaps/job, mean phase batch "
          f"{mean_size:.2f}, 60 succeeded, 0 duplicates")


def test_interactive_jobs_start_before_the_batch_drains(farm_env: FarmEnv) -> None:
    """One worker busy with a long batch.

    Interactive jobs submitted behind it start before the batch's last job (the queue order
    rotates: at most one batch job between two takes).
    """
    farm_env.start_worker("a")
    batch = farm_env.submit(farm_env.new_jobs(10, prefix="slow batch", tags=[{"fault": "sleep:0.7"}] * 10))
    wait_until(lambda: any(j.status.value != "queued" for j in farm_env.jobs(batch)), 90,
               what="the batch to start")
    interactive = farm_env.submit(farm_env.new_jobs(2, prefix="someone waits", priority="interactive", seed0=100))
    jobs = {j.id: j for j in farm_env.wait_terminal(batch + interactive, 180)}
    assert_exactly_once(farm_env, batch + interactive)
    last_batch_start = max(jobs[j].started_at for j in batch if jobs[j].started_at)
    inter_starts = [jobs[j].started_at for j in interactive]
    assert all(s is not None and s < last_batch_start for s in inter_starts)
    submitted = min(jobs[j].created_at for j in interactive)
    latest_inter = max(s for s in inter_starts if s is not None)
    overtaking = [j for j in batch if jobs[j].started_at and submitted < jobs[j].started_at < latest_inter]
    assert len(overtaking) <= 3, len(overtaking)
    after = sum(1 for j in batch if jobs[j].started_at and jobs[j].started_at > latest_inter)
    print(f"\n[numbers] interactive behind a 10-job batch: {len(overtaking)} batch job(s) started between the "
          f"interactive submit and the last interactive start; {after} batch jobs still waited behind them")


def test_pickled_and_malformed_messages_are_refused(farm_env: FarmEnv, tmp_path: Path) -> None:
    """A pickled farm.render message is refused before it is deserialised (nothing claimed, no code run).

    A message whose argument is not a job id is rejected; the worker keeps working.
    """
    worker = farm_env.start_worker("a")
    [victim] = farm_env.submit(farm_env.new_jobs(1, prefix="victim"), send=False)
    farm_env.ledger.mark_enqueued([victim])  # so the reaper does not send it properly
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))  # runs on unpickling: the proof would be this file

    task_id = str(uuid.uuid4())
    body = ((victim,), {"payload": Payload()}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    with Connection(farm_env.broker_url) as conn:
        producer = conn.Producer(serializer="pickle")
        producer.publish(
            body, exchange="", routing_key=TINY_BATCH, serializer="pickle",
            headers={"lang": "py", "task": TASK_RENDER, "id": task_id, "root_id": task_id, "parent_id": None,
                     "group": None, "retries": 0, "eta": None, "expires": None, "timelimit": [None, None],
                     "argsrepr": repr((victim,)), "kwargsrepr": "{}", "origin": "attacker"},
        )
    pickle.dumps(body)  # the payload really is picklable: the refusal is the worker's doing
    wait_until(lambda: "Refusing to deserialize untrusted content of type pickle" in worker.text(), 60,
               what="the worker to refuse the pickled message")
    app = make_app(farm_env.settings())
    app.send_task(TASK_RENDER, args=["../../etc/passwd"], queue=TINY_BATCH)
    wait_until(lambda: "refused: farm.render takes one job id" in worker.text(), 60,
               what="the worker to reject a malformed message")
    later = farm_env.submit(farm_env.new_jobs(2, prefix="after the attack", seed0=10))
    farm_env.wait_terminal(later, 120)
    assert_exactly_once(farm_env, later)
    job = farm_env.ledger.get_job(victim)
    assert job.status.value == "queued" and job.attempts == 0 and claimed_count(farm_env, victim) == 0
    assert not marker.exists(), "the pickled body was deserialised"
    assert worker.alive()


def test_circuit_breaker_stops_consuming(farm_env: FarmEnv) -> None:
    """Three failing jobs in a row.

    The worker stops consuming (a following job stays queued while only it runs), records state
    circuit_open, and stays up; another worker takes the job.
    """
    farm_env.overrides.update(FARM_CIRCUIT_BREAKER_FAILURES="3")
    worker = farm_env.start_worker("a")
    failing = farm_env.submit(farm_env.new_jobs(3, prefix="broken", tags=[{"fault": "fail"}] * 3))

    def state() -> str | None:
        rows = {w.name: w for w in farm_env.ledger.list_workers()}
        row = rows.get(worker.name)
        return row.state if row else None

    wait_until(lambda: state() == "circuit_open", 90, what="the circuit breaker to open")
    for job in farm_env.jobs(failing):
        assert job.status.value == "failed" and job.error_type == "InjectedFailure", job
    [waiting] = farm_env.submit(farm_env.new_jobs(1, prefix="innocent", seed0=50))
    time.sleep(5)  # a fixed look: with its consumers cancelled, the worker must not take the job
    job = farm_env.ledger.get_job(waiting)
    assert job.status.value == "queued" and claimed_count(farm_env, waiting) == 0
    assert worker.alive() and state() == "circuit_open"
    assert "CRITICAL" in worker.text() and "circuit breaker OPEN" in worker.text()
    row = next(w for w in farm_env.ledger.list_workers() if w.name == worker.name)
    assert row.consecutive_failures == 3 and row.jobs_failed == 3
    farm_env.start_worker("b")
    farm_env.wait_terminal([waiting], 120)
    assert_exactly_once(farm_env, [waiting])
    print("\n[numbers] circuit breaker: opened after 3 failed jobs; the next job waited queued until another "
          "worker took it")


def test_sigterm_finishes_the_render_or_hands_it_back(farm_env: FarmEnv, redis_server: RedisServer) -> None:
    """SIGTERM: a render that ends within --stop-timeout (5 s here) is finished and recorded.

    One that would not is stopped at the deadline and handed back (``released``, attempt not
    counted, sent again); the worker exits 0 both times.
    """
    first = farm_env.start_worker("a")
    [short] = farm_env.submit(farm_env.new_jobs(1, prefix="short", tags=[{"fault": "sleep:2"}]))
    wait_until(lambda: farm_env.ledger.get_job(short).status.value == "running", 90, what="the short render")
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=60) == 0
    assert_exactly_once(farm_env, [short])

    second = farm_env.start_worker("b")
    [long] = farm_env.submit(farm_env.new_jobs(1, prefix="long", seed0=7, tags=[{"fault": "sleep:120"}]))
    wait_until(lambda: farm_env.ledger.get_job(long).status.value == "running", 90, what="the long render")
    sent = time.monotonic()
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=60) == 0
    took = time.monotonic() - sent
    assert 4 < took < 40, took
    job = farm_env.ledger.get_job(long)
    kinds = [e.kind for e in farm_env.ledger.events(long)]
    assert job.status.value == "queued" and job.attempts == 0, job
    assert kinds[-1] == "released", kinds
    assert job.enqueued_at is not None  # sent again before the worker exited
    assert redis_server.client().llen(TINY_BATCH) >= 1
    print(f"\n[numbers] SIGTERM: short render finished and recorded; long render handed back {took:.1f} s "
          "after SIGTERM (stop timeout 5 s)")


def test_gpu_worker_pinned_to_a_missing_gpu_stops_consuming(farm_env: FarmEnv, redis_server: RedisServer) -> None:
    """``farm worker --device cuda:3`` pins CUDA_VISIBLE_DEVICES=3 and names itself farm-gpu3@<host>.

    On this GPU-less machine its engine cannot start, so it opens its circuit on the first message
    and hands the message back instead of failing the job.
    """
    host = socket.gethostname()
    worker = farm_env.spawn("gpu3", [FARM, "worker", "--device", "cuda:3", "--stop-timeout", "5"], wait=True)
    assert f"farm-gpu3@{host} ready." in worker.text()
    assert "device cuda:3 (torch device cuda:0, CUDA_VISIBLE_DEVICES='3')" in worker.text()
    [job_id] = farm_env.submit(farm_env.new_jobs(1, prefix="needs a gpu"))

    def row() -> object:
        return next((w for w in farm_env.ledger.list_workers() if w.name == f"farm-gpu3@{host}"), None)

    wait_until(lambda: getattr(row(), "state", None) == "circuit_open", 90, what="the circuit to open")
    record = row()
    assert record is not None and getattr(record, "device") == "cuda:3"
    assert "CUDA" in str((getattr(record, "detail") or {}).get("circuit_reason"))
    job = farm_env.ledger.get_job(job_id)
    assert job.status.value == "queued" and claimed_count(farm_env, job_id) == 0
    wait_until(lambda: redis_server.client().llen(TINY_BATCH) == 1, 30, what="the message back in its queue")
    assert worker.alive()
