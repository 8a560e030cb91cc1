"""The farm's gateway methods on both backends.

The new job columns, ``claim_more`` (and two workers racing for it), ``release``, the enqueue
bookkeeping, batch / succeeded listings, and the ``workers`` and ``models`` tables.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import text

from farm.errors import BatchNotFound, JobNotFound
from farm.ledger import JobStatus, Ledger, NewJob, db
from farm.spec import compat_digest, parse_spec

Q, R, S, F, C = (JobStatus(s) for s in ("queued", "running", "succeeded", "failed", "cancelled"))


def claim(ledger: Ledger, job_id: str, host: str = "w1", lease_s: float = 60):
    return ledger.claim(job_id, worker_host=host, worker_device="cuda:0", lease_s=lease_s)


def claim_more(ledger: Ledger, compat_key: str, limit: int, host: str = "w1", **kw):
    return ledger.claim_more(compat_key, limit=limit, worker_host=host, worker_device="cuda:1", lease_s=60, **kw)


# -- the new columns -----------------------------------------------------------------------------


def test_new_job_from_spec_computes_the_compat_key() -> None:
    spec = parse_spec({"prompt": "a fox", "seed": 3, "steps": 4})
    new = NewJob.from_spec(spec, batch_index=7, no_cache=True)
    assert new.compat_key == compat_digest(spec.canonical()) and len(new.compat_key) == 32
    assert (new.batch_index, new.no_cache) == (7, True)
    default = NewJob.from_spec(spec)
    assert (default.batch_index, default.no_cache) == (None, False)
    # Prompt and seed do not matter for compatibility; the step count does.
    assert NewJob.from_spec(parse_spec({"prompt": "an owl", "seed": 9, "steps": 4})).compat_key == new.compat_key
    assert NewJob.from_spec(parse_spec({"prompt": "a fox", "seed": 3, "steps": 5})).compat_key != new.compat_key


def test_new_columns_round_trip(ledger, make_job) -> None:
    new = make_job(seed=1, batch_index=4, no_cache=True, steps=4)
    ledger.add_job(new)
    job = ledger.get_job(new.id)
    assert (job.batch_index, job.compat_key, job.enqueued_at, job.no_cache) == (4, new.compat_key, None, True)
    assert job.to_dict()["compat_key"] == new.compat_key and job.to_dict()["no_cache"] is True


# -- claim_more ----------------------------------------------------------------------------------


def test_claim_more_takes_compatible_jobs_in_queue_order(ledger, make_job, clock) -> None:
    batch = [make_job(seed=10 + i, steps=4, batch_index=i) for i in (2, 0, 1)]
    batch_id, _ = ledger.create_batch("a" * 64, "b", "m.yaml", batch)
    clock.advance(1)
    interactive = make_job(seed=30, steps=4, priority="interactive")
    other_key = make_job(seed=31, steps=5)
    follower = make_job(seed=10, steps=4)  # same key as a batch job: follows it
    ledger.add_jobs([interactive, other_key, follower])
    assert ledger.get_job(follower.id).follower
    key = interactive.compat_key
    assert other_key.compat_key != key

    first = claim_more(ledger, key, 2)
    by_index = {j.batch_index: j.id for j in ledger.batch_jobs(batch_id)}
    assert [j.id for j in first] == [interactive.id, by_index[0]]
    for job in first:
        assert (job.status, job.worker_host, job.worker_device, job.attempts) == (R, "w1", "cuda:1", 1)
        assert job.lease_expires_at == clock.now + timedelta(seconds=60)
        assert [e.kind for e in ledger.events(job.id)][-1] == "claimed"
    rest = claim_more(ledger, key, 10)
    assert [j.id for j in rest] == [by_index[1], by_index[2]]  # never the follower
    assert claim_more(ledger, key, 10) == []
    assert ledger.get_job(follower.id).status is Q and ledger.get_job(other_key.id).status is Q


def test_claim_more_limit_and_priority(ledger, make_job, clock) -> None:
    jobs = [make_job(seed=s, priority=p) for s, p in ((1, "batch"), (2, "interactive"), (3, "batch"))]
    for job in jobs:
        ledger.add_job(job)
        clock.advance(1)
    key = jobs[0].compat_key
    assert claim_more(ledger, key, 0) == []
    assert [j.id for j in claim_more(ledger, key, 5, priority="batch")] == [jobs[0].id, jobs[2].id]
    assert ledger.get_job(jobs[1].id).status is Q
    with pytest.raises(ValueError):
        claim_more(ledger, key, 1, priority="urgent")
    with pytest.raises(ValueError):
        ledger.claim_more(key, limit=1, worker_host="w", worker_device="cpu", lease_s=0)
    assert claim_more(ledger, "0" * 32, 5) == []


def test_two_workers_racing_never_claim_the_same_job(ledger_url: str, make_job, clock) -> None:
    total = 60
    with Ledger(ledger_url, clock=clock) as setup:
        new = [make_job(seed=100 + i) for i in range(total)]
        setup.add_jobs(new)
    key = new[0].compat_key
    barrier = threading.Barrier(2)
    claimed: dict[str, list[str]] = {"w1": [], "w2": []}
    errors: list[BaseException] = []

    def work(host: str) -> None:
        try:
            with Ledger(ledger_url, clock=clock) as mine:
                barrier.wait()
                while batch := claim_more(mine, key, 3, host=host):
                    claimed[host].extend(j.id for j in batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(h,)) for h in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert not set(claimed["w1"]) & set(claimed["w2"])
    assert sorted(claimed["w1"] + claimed["w2"]) == sorted(j.id for j in new)
    with Ledger(ledger_url) as reader:
        for host, ids in claimed.items():
            for job_id in ids:
                job = reader.get_job(job_id)
                assert (job.status, job.worker_host, job.attempts) == (R, host, 1)
                assert [e.kind for e in reader.events(job_id)] == ["created", "claimed"]


@pytest.mark.postgres
def test_claim_more_skips_rows_another_transaction_holds(pg_url: str, make_job, clock) -> None:
    with Ledger(pg_url, clock=clock) as ledger:
        locked, free = make_job(seed=1), make_job(seed=2)
        ledger.add_jobs([locked, free])
        engine = db.make_engine(pg_url)
        try:
            got: list[object] = []
            with engine.connect() as other, other.begin():
                other.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": locked.id})
                thread = threading.Thread(target=lambda: got.extend(claim_more(ledger, locked.compat_key, 5)))
                thread.start()
                thread.join(timeout=10)
                finished = not thread.is_alive()  # it would wait for the lock without SKIP LOCKED
            thread.join()
            assert finished
            assert [j.id for j in got] == [free.id]  # type: ignore[attr-defined]
        finally:
            engine.dispose()
        assert ledger.get_job(locked.id).status is Q


# -- release -------------------------------------------------------------------------------------


def test_release_hands_a_running_job_back_uncounted(ledger, make_job) -> None:
    job_id = ledger.add_job(make_job())
    ledger.mark_enqueued([job_id])
    claim(ledger, job_id, host="w1")
    assert ledger.release(job_id, worker_host="w2", reason="SIGTERM") is None  # not the owner
    assert ledger.get_job(job_id).status is R
    assert [e.kind for e in ledger.events(job_id)] == ["created", "claimed"]

    job = ledger.release(job_id, worker_host="w1", reason="SIGTERM")
    assert job is not None
    assert (job.status, job.attempts, job.enqueued_at, job.lease_expires_at) == (Q, 0, None, None)
    last = ledger.events(job_id)[-1]
    assert (last.kind, last.from_status, last.to_status, last.worker) == ("released", R, Q, "w1")
    assert last.detail == {"reason": "SIGTERM"}
    assert ledger.release(job_id, worker_host="w1", reason="again") is None  # not running
    assert (job_id, "batch.tiny") in ledger.jobs_to_enqueue()
    with pytest.raises(JobNotFound):
        ledger.release("nope", worker_host="w1", reason="x")


def test_release_never_takes_attempts_below_zero(ledger, make_job) -> None:
    job_id = ledger.add_job(make_job())
    ledger.transition(job_id, R, kind="claimed", worker_host="w1", attempts=0)
    job = ledger.release(job_id, worker_host="w1", reason="SIGTERM")
    assert job is not None and job.attempts == 0
    claim(ledger, job_id)
    claim_count = ledger.get_job(job_id).attempts
    ledger.release(job_id, worker_host="w1", reason="SIGTERM")
    assert ledger.get_job(job_id).attempts == claim_count - 1


# -- enqueue bookkeeping -------------------------------------------------------------------------


def test_jobs_to_enqueue_order_filters_and_marking(ledger, make_job, clock) -> None:
    batch = [make_job(seed=i, batch_index=i) for i in (1, 0)]
    batch_id, _ = ledger.create_batch("e" * 64, "b", "m.yaml", batch)
    clock.advance(1)
    single = make_job(seed=50)
    urgent = make_job(seed=51, priority="interactive")
    follower = make_job(seed=50)
    running = make_job(seed=52)
    ledger.add_jobs([single, urgent, follower, running])
    claim(ledger, running.id)

    expected = [(urgent.id, "interactive.tiny"), (batch[1].id, "batch.tiny"), (batch[0].id, "batch.tiny"),
                (single.id, "batch.tiny")]
    assert ledger.jobs_to_enqueue() == expected
    assert ledger.jobs_to_enqueue(limit=2) == expected[:2]
    assert ledger.jobs_to_enqueue(batch_id=batch_id) == expected[1:3]
    assert ledger.jobs_to_enqueue(job_ids=[single.id, urgent.id, follower.id, running.id]) == [
        expected[0], expected[3]]
    assert ledger.jobs_to_enqueue(job_ids=[]) == []

    ledger.mark_enqueued([urgent.id, batch[1].id])
    assert ledger.get_job(urgent.id).enqueued_at == clock.now
    assert ledger.jobs_to_enqueue() == [expected[2], expected[3]]
    sent_at = clock.now
    clock.advance(100)
    assert ledger.jobs_to_enqueue(stale_before=sent_at) == [expected[2], expected[3]]
    assert ledger.jobs_to_enqueue(stale_before=sent_at + timedelta(seconds=1)) == expected
    ledger.mark_enqueued([])


def test_retries_are_to_be_enqueued_again(ledger, make_job) -> None:
    job_id = ledger.add_job(make_job(max_attempts=3))
    ledger.mark_enqueued([job_id])
    claim(ledger, job_id)
    ledger.record_failure(job_id, error_type="Oom", error_message="x", retry=True)
    assert ledger.get_job(job_id).enqueued_at is None
    assert ledger.jobs_to_enqueue() == [(job_id, "batch.tiny")]


# -- listings ------------------------------------------------------------------------------------


def test_batch_jobs_in_batch_index_order_and_succeeded_jobs(ledger, make_job) -> None:
    items = [make_job(seed=i, batch_index=i) for i in (3, 1, 0, 2)]
    batch_id, _ = ledger.create_batch("c" * 64, "b", "m.yaml", items)
    loose = ledger.add_job(make_job(seed=99))
    listed = ledger.batch_jobs(batch_id)
    assert [j.batch_index for j in listed] == [0, 1, 2, 3]
    with pytest.raises(BatchNotFound):
        ledger.batch_jobs("nope")

    assert ledger.succeeded_jobs() == []
    for job in (listed[2], listed[0]):
        claim(ledger, job.id)
        ledger.record_success(job.id, output_uri="file:///x.mp4", file_sha256="f" * 64, frames_sha256="e" * 64,
                              effective_params={}, weights_fingerprint="wf", env_fingerprint={}, timings={})
    claim(ledger, loose)
    ledger.record_success(loose, output_uri="file:///y.mp4", file_sha256="f" * 64, frames_sha256="e" * 64,
                          effective_params={}, weights_fingerprint="wf", env_fingerprint={}, timings={})
    assert [j.batch_index for j in ledger.succeeded_jobs(batch_id)] == [0, 2]
    assert {j.id for j in ledger.succeeded_jobs()} == {listed[0].id, listed[2].id, loose}


# -- models and workers --------------------------------------------------------------------------


def test_register_model_upserts(ledger, clock) -> None:
    assert ledger.model_fingerprint("wan2.2-t2v-a14b") is None
    ledger.register_model("wan2.2-t2v-a14b", "fp-1", worker="w1")
    assert ledger.model_fingerprint("wan2.2-t2v-a14b") == "fp-1"
    clock.advance(5)
    ledger.register_model("wan2.2-t2v-a14b", "fp-2", worker="w2")
    assert ledger.model_fingerprint("wan2.2-t2v-a14b") == "fp-2"
    assert ledger.model_fingerprint("other") is None
    with pytest.raises(ValueError):
        ledger.register_model("x", "", worker=None)


def test_worker_seen_inserts_then_updates(ledger, clock) -> None:
    assert ledger.list_workers() == []
    started = clock.now
    ledger.worker_seen("farm-gpu0@h", host="h", device="cuda:0", pid=10, state="starting")
    ledger.worker_seen("farm-cpu-5@h", host="h", device="cpu", pid=5, state="idle", detail={"queues": ["a"]})
    clock.advance(30)
    ledger.worker_seen("farm-gpu0@h", host="h", device="cuda:0", pid=10, state="circuit_open",
                       consecutive_failures=3, jobs_succeeded=7, jobs_failed=3, detail={"last_error": "Oom"})
    gpu, cpu = sorted(ledger.list_workers(), key=lambda w: w.device, reverse=True)
    assert [w.name for w in ledger.list_workers()] == ["farm-cpu-5@h", "farm-gpu0@h"]
    assert (gpu.name, gpu.state, gpu.pid) == ("farm-gpu0@h", "circuit_open", 10)
    assert (gpu.consecutive_failures, gpu.jobs_succeeded, gpu.jobs_failed) == (3, 7, 3)
    assert (gpu.started_at, gpu.last_seen_at, gpu.detail) == (started, clock.now, {"last_error": "Oom"})
    assert (cpu.state, cpu.detail, cpu.last_seen_at) == ("idle", {"queues": ["a"]}, started)
    assert gpu.to_dict()["started_at"] == started.isoformat()

    clock.advance(10)  # a restart: new pid
    ledger.worker_seen("farm-gpu0@h", host="h", device="cuda:0", pid=11, state="idle")
    [restarted] = [w for w in ledger.list_workers() if w.name == "farm-gpu0@h"]
    assert (restarted.pid, restarted.started_at, restarted.consecutive_failures, restarted.detail) == (
        11, clock.now, 0, None)
    with pytest.raises(ValueError):
        ledger.worker_seen("w", host="h", device="cpu", pid=1, state="sleeping")
    assert len(ledger.list_workers()) == 2


# -- pace ------------------------------------------------------------------------------------------


def test_pace_of_a_batch_and_of_a_list_of_jobs(ledger, make_job, clock) -> None:
    """What ETAs come from.

    Counts, running progress, rendered jobs finished (cache hits excluded), when the first rendered
    job was claimed (not when the batch was created), and the workers.
    """
    jobs = [make_job(seed=70 + i, batch_index=i) for i in range(5)]
    batch_id, _ = ledger.create_batch("p" * 64, "pace", "pace.yaml", jobs)
    ids = [j.id for j in ledger.batch_jobs(batch_id)]  # seeds 70..74
    empty = ledger.pace(batch_id=batch_id)
    assert empty.counts["queued"] == 5 and empty.first_started_at is None and empty.rendered_done == 0
    clock.advance(600)  # ten minutes queued behind other work
    started = clock.now
    for i, job_id in enumerate(ids[:3]):
        claim(ledger, job_id, host=f"w{i % 2}")
    clock.advance(6)
    for job_id in ids[:2]:
        ledger.record_success(job_id, output_uri=f"file:///o/{job_id}.mp4", file_sha256="f" * 64,
                              frames_sha256="e" * 64, effective_params={}, weights_fingerprint="wf",
                              env_fingerprint={}, timings={})
    ledger.heartbeat(ids[2], worker_host="w0", lease_s=60, progress=0.5)
    pace = ledger.pace(batch_id=batch_id)
    assert pace.counts == {"queued": 2, "running": 1, "succeeded": 2, "failed": 0, "cancelled": 0}
    assert pace.running_progress == pytest.approx(0.5)
    assert (pace.rendered_done, pace.first_started_at, pace.workers) == (2, started, 2)
    # a cache hit finishes without a render: counted, but not as pace
    ledger.register_model("tiny", "wf", worker="w0")
    hit = ledger.add_job(make_job(seed=70))
    assert ledger.get_job(hit).cache_of_job_id == ids[0]
    both = ledger.pace(job_ids=[*ids, hit])
    assert both.counts["succeeded"] == 3 and both.rendered_done == 2 and both.first_started_at == started
    assert ledger.pace(job_ids=[hit]).first_started_at is None
