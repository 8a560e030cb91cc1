"""The ledger gateway on both backends.

Adding jobs and batches, reading them back, the worker life cycle (claim, heartbeat, success,
failure and retries, cancel, the lease reaper), stars, cache lookups and the event trail.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, timedelta

import pytest
import sqlalchemy.exc

from farm.errors import BatchNotFound, IllegalTransition, JobNotFound
from farm.ledger import JobStatus, Ledger, NewJob
from farm.ledger.manager import LEASE_EXPIRED_ERROR
from farm.ledger.records import OutputMark
from farm.spec import MAX_SEED, parse_spec

Q, R, S, F, C = (JobStatus(s) for s in ("queued", "running", "succeeded", "failed", "cancelled"))


def succeed(ledger: Ledger, job_id: str, *, weights: str = "wf-1", worker_host: str | None = None):
    return ledger.record_success(
        job_id, output_uri=f"file:///out/{job_id}.mp4", file_sha256="f" * 64, frames_sha256="e" * 64,
        effective_params={"steps": 4}, weights_fingerprint=weights, env_fingerprint={"torch": "2.13.0"},
        timings={"render_s": 1.5, "load_s": 0.25}, worker_host=worker_host,
    )


def claim(ledger: Ledger, job_id: str, host: str = "w1", lease_s: float = 60):
    return ledger.claim(job_id, worker_host=host, worker_device="cuda:0", lease_s=lease_s)


# -- adding and reading ------------------------------------------------------------------------


def test_add_jobs_round_trips_every_field(ledger, clock) -> None:
    spec = parse_spec({"prompt": "  a  red\tfox ", "seed": MAX_SEED, "priority": "interactive",
                       "tags": {"b": "2", "a": "1"}, "steps": 4})
    new = NewJob.from_spec(spec, max_attempts=5)
    assert ledger.add_jobs([new]) == [new.id]

    job = ledger.get_job(new.id)
    assert job.status is Q
    assert (job.job_key, job.prompt, job.seed) == (spec.job_key, "a red fox", MAX_SEED)
    assert job.priority == "interactive"
    assert job.params == spec.canonical()
    assert job.requested_params == spec.model_dump(mode="json", exclude_none=True)
    assert "width" not in job.requested_params
    assert job.tags == {"a": "1", "b": "2"}
    assert (job.attempts, job.max_attempts, job.progress, job.starred) == (0, 5, 0.0, False)
    assert job.created_at == clock.now and job.created_at.tzinfo == UTC
    assert job.spec().job_key == spec.job_key
    assert json.loads(json.dumps(job.to_dict()))["status"] == "queued"
    [created] = ledger.events(new.id)
    assert (created.from_status, created.to_status, created.kind) == (None, Q, "created")


def test_add_jobs_is_one_transaction(ledger, make_job) -> None:
    first = make_job()
    ledger.add_job(first)
    fresh, duplicate = make_job(), make_job(job_id=first.id)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        ledger.add_jobs([fresh, duplicate])
    with pytest.raises(JobNotFound):
        ledger.get_job(fresh.id)
    assert [j.id for j in ledger.list_jobs()] == [first.id]


def test_add_jobs_allows_shared_job_keys_and_checks_parents(ledger, make_job) -> None:
    a, b = make_job(seed=7), make_job(seed=7)
    ledger.add_jobs([a, b])
    assert a.job_key == b.job_key
    child = make_job(parent_job_id=a.id)
    ledger.add_job(child)
    assert ledger.get_job(child.id).parent_job_id == a.id
    with pytest.raises(sqlalchemy.exc.IntegrityError):  # foreign keys are on, SQLite included
        ledger.add_job(make_job(parent_job_id=str(uuid.uuid4())))
    assert ledger.add_jobs([]) == []


def test_new_job_from_spec() -> None:
    spec = parse_spec({"prompt": "x", "seed": 1})
    a, b = NewJob.from_spec(spec), NewJob.from_spec(spec)
    assert a.id != b.id and uuid.UUID(a.id).version == 4
    assert NewJob.from_spec(spec, job_id="fixed").id == "fixed"
    assert a.max_attempts == 3 and a.model_name == "tiny" and a.seed_strategy == "explicit"
    with pytest.raises(ValueError, match="max_attempts"):
        NewJob.from_spec(spec, max_attempts=0)


def test_get_job_unknown_raises(ledger) -> None:
    with pytest.raises(JobNotFound, match="no job with id 'nope'"):
        ledger.get_job("nope")
    with pytest.raises(JobNotFound):
        ledger.events("nope")


def test_job_progress_is_the_jobs_status_progress_and_start(ledger, make_job) -> None:
    job_id = ledger.add_job(make_job(seed=1))
    queued = ledger.job_progress(job_id)
    assert (queued.id, queued.status, queued.progress, queued.started_at) == (job_id, JobStatus.QUEUED, 0.0, None)
    ledger.claim(job_id, worker_host="w1", worker_device="cpu", lease_s=60)
    ledger.heartbeat(job_id, worker_host="w1", lease_s=60, progress=0.25)
    running, job = ledger.job_progress(job_id), ledger.get_job(job_id)
    assert (running.status, running.progress, running.started_at) == (JobStatus.RUNNING, 0.25, job.started_at)
    assert running.started_at is not None and running.started_at.tzinfo is not None
    with pytest.raises(JobNotFound):
        ledger.job_progress(str(uuid.uuid4()))


def test_list_jobs_filters_orders_and_pages(ledger, make_job, clock) -> None:
    batch_id, _ = ledger.create_batch("d" * 64, "b", "b.yaml", [make_job(), make_job()])
    loose = []
    for _ in range(3):
        clock.advance(1)
        loose.append(ledger.add_job(make_job()))
    claim(ledger, loose[0])

    newest_first = [j.id for j in ledger.list_jobs()]
    assert newest_first[:3] == loose[::-1]
    assert len(newest_first) == 5
    assert {j.id for j in ledger.list_jobs(batch_id=batch_id)} == set(newest_first[3:])
    assert [j.id for j in ledger.list_jobs(status="running")] == [loose[0]]
    assert [j.id for j in ledger.list_jobs(status=Q, batch_id=batch_id, limit=1)] == [newest_first[3]]
    assert [j.id for j in ledger.list_jobs(limit=2, offset=1)] == newest_first[1:3]
    assert ledger.list_jobs(status="failed") == []
    with pytest.raises(ValueError, match="unknown job status"):
        ledger.list_jobs(status="done")


# -- batches ---------------------------------------------------------------------------------


def test_create_batch_is_idempotent_by_manifest_digest(ledger, make_job, clock) -> None:
    jobs = [make_job() for _ in range(3)]
    batch_id, created = ledger.create_batch("a" * 64, "nightly", "/home/me/manifests/nightly.yaml", jobs)
    assert created
    batch = ledger.get_batch(batch_id)
    assert (batch.name, batch.source_name, batch.job_count) == ("nightly", "nightly.yaml", 3)
    assert batch.created_at == clock.now
    assert {j.batch_id for j in ledger.list_jobs(batch_id=batch_id)} == {batch_id}
    assert ledger.batch_counts(batch_id) == {Q: 3, R: 0, S: 0, F: 0, C: 0}
    assert ledger.events(jobs[0].id)[0].detail == {"batch_id": batch_id, "parent_job_id": None}

    more = [make_job() for _ in range(5)]
    again, created_again = ledger.create_batch("a" * 64, "other", "other.yaml", more)
    assert (again, created_again) == (batch_id, False)
    assert len(ledger.list_jobs()) == 3
    assert ledger.get_batch(batch_id).name == "nightly"
    assert ledger.find_batch_by_digest("a" * 64) == batch
    assert ledger.find_batch_by_digest("b" * 64) is None

    claim(ledger, jobs[0].id)
    ledger.cancel(jobs[1].id)
    assert ledger.batch_counts(batch_id) == {Q: 1, R: 1, S: 0, F: 0, C: 1}


def test_unknown_batch(ledger) -> None:
    with pytest.raises(BatchNotFound):
        ledger.get_batch("nope")
    with pytest.raises(BatchNotFound):
        ledger.batch_counts("nope")


def test_source_name_is_only_a_file_name(ledger, make_job) -> None:
    batch_id, _ = ledger.create_batch("c" * 64, "n", "C:\\Users\\me\\x\\..\\m.yaml", [make_job()])
    assert ledger.get_batch(batch_id).source_name == "m.yaml"


def test_concurrent_create_batch_with_same_digest_writes_one_batch(ledger, make_job) -> None:
    n_threads = 4
    barrier = threading.Barrier(n_threads)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def submit() -> None:
        jobs = [make_job() for _ in range(20)]
        barrier.wait()
        try:
            results.append(ledger.create_batch("9" * 64, "race", "race.yaml", jobs))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({bid for bid, _ in results}) == 1
    assert sorted(created for _, created in results) == [False] * (n_threads - 1) + [True]
    assert len(ledger.list_jobs(limit=1000)) == 20


# -- worker life cycle -------------------------------------------------------------------------


def test_claim_starts_a_lease(ledger, make_job, clock) -> None:
    job_id = ledger.add_job(make_job())
    job = claim(ledger, job_id, lease_s=30)
    assert job is not None and job.status is R
    assert (job.attempts, job.worker_host, job.worker_device) == (1, "w1", "cuda:0")
    assert job.started_at == job.heartbeat_at == clock.now
    assert job.lease_expires_at == clock.now + timedelta(seconds=30)
    event = ledger.events(job_id)[-1]
    assert (event.kind, event.worker, event.from_status, event.to_status) == ("claimed", "w1", Q, R)

    events_before = ledger.events(job_id)
    assert claim(ledger, job_id, host="w2") is None  # redelivered message: dropped
    assert ledger.get_job(job_id) == job and ledger.events(job_id) == events_before
    with pytest.raises(JobNotFound):
        claim(ledger, "nope")
    with pytest.raises(ValueError):
        claim(ledger, job_id, lease_s=0)


def test_claim_is_exclusive_under_concurrency(ledger, make_job) -> None:
    job_id = ledger.add_job(make_job())
    n_threads = 6
    barrier = threading.Barrier(n_threads)
    outcomes: dict[str, object] = {}

    def worker(host: str) -> None:
        barrier.wait()
        try:
            outcomes[host] = claim(ledger, job_id, host=host)
        except BaseException as exc:
            outcomes[host] = exc

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [host for host, got in outcomes.items() if got is not None]
    assert len(winners) == 1, outcomes
    job = ledger.get_job(job_id)
    assert (job.worker_host, job.attempts) == (winners[0], 1)
    assert [e.kind for e in ledger.events(job_id)] == ["created", "claimed"]


def test_heartbeat_only_by_the_owner_while_running(ledger, make_job, clock) -> None:
    job_id = ledger.add_job(make_job())
    assert not ledger.heartbeat(job_id, worker_host="w1", lease_s=30)  # not running yet
    claim(ledger, job_id, lease_s=30)
    clock.advance(20)
    assert ledger.heartbeat(job_id, worker_host="w1", lease_s=30, progress=0.5)
    job = ledger.get_job(job_id)
    assert (job.heartbeat_at, job.lease_expires_at, job.progress) == (
        clock.now, clock.now + timedelta(seconds=30), 0.5)

    clock.advance(5)
    assert not ledger.heartbeat(job_id, worker_host="intruder", lease_s=300, progress=0.9)
    assert ledger.get_job(job_id) == job
    with pytest.raises(ValueError, match="progress"):
        ledger.heartbeat(job_id, worker_host="w1", lease_s=30, progress=1.5)
    assert [e.kind for e in ledger.events(job_id)] == ["created", "claimed"]  # no event per beat

    ledger.cancel(job_id)
    assert not ledger.heartbeat(job_id, worker_host="w1", lease_s=30)  # the worker learns to stop


def test_record_success(ledger, make_job, clock) -> None:
    job_id = ledger.add_job(make_job())
    claim(ledger, job_id)
    with pytest.raises(IllegalTransition):  # the lease belongs to w1
        succeed(ledger, job_id, worker_host="w2")
    assert ledger.get_job(job_id).status is R
    clock.advance(3)
    job = succeed(ledger, job_id, worker_host="w1")
    assert job.status is S and job.finished_at == clock.now
    assert job.output_uri == f"file:///out/{job_id}.mp4"
    assert (job.file_sha256, job.frames_sha256) == ("f" * 64, "e" * 64)
    assert (job.effective_params, job.weights_fingerprint) == ({"steps": 4}, "wf-1")
    assert job.env_fingerprint == {"torch": "2.13.0"}
    assert job.timings == {"render_s": 1.5, "load_s": 0.25}
    assert (job.progress, job.lease_expires_at) == (1.0, None)
    assert [e.kind for e in ledger.events(job_id)] == ["created", "claimed", "succeeded"]

    queued = ledger.add_job(make_job())
    with pytest.raises(IllegalTransition):  # a render result for a job never claimed
        succeed(ledger, queued)


def test_failure_retries_until_the_attempt_cap(ledger, make_job) -> None:
    job_id = ledger.add_job(make_job(max_attempts=2))
    claim(ledger, job_id)
    job = ledger.record_failure(job_id, error_type="OutOfMemory", error_message="oom", retry=True)
    assert (job.status, job.attempts, job.error_type, job.error_message) == (Q, 1, "OutOfMemory", "oom")
    assert job.lease_expires_at is None and job.finished_at is None

    claim(ledger, job_id, host="w2")
    job = ledger.record_failure(job_id, error_type="OutOfMemory", error_message="oom again", retry=True)
    assert (job.status, job.attempts) == (F, 2)
    assert job.finished_at is not None
    trail = ledger.events(job_id)
    assert [e.kind for e in trail] == ["created", "claimed", "retried", "claimed", "failed"]
    assert trail[-1].detail is not None and trail[-1].detail["attempts"] == 2
    assert claim(ledger, job_id) is None


def test_permanent_failure_and_ownership(ledger, make_job) -> None:
    job_id = ledger.add_job(make_job(max_attempts=5))
    claim(ledger, job_id)
    with pytest.raises(IllegalTransition):
        ledger.record_failure(job_id, error_type="X", error_message="x", retry=True, worker_host="w2")
    job = ledger.record_failure(job_id, error_type="SpecError", error_message="x" * 20_000, retry=False,
                                worker_host="w1")
    assert job.status is F and job.attempts == 1
    assert job.error_message is not None and len(job.error_message) <= 10_000
    with pytest.raises(IllegalTransition):
        ledger.record_failure(job_id, error_type="X", error_message="x", retry=True)
    with pytest.raises(JobNotFound):
        ledger.record_failure("nope", error_type="X", error_message="x", retry=True)


def test_cancel(ledger, make_job) -> None:
    queued, running, done = (ledger.add_job(make_job()) for _ in range(3))
    claim(ledger, running)
    claim(ledger, done)
    succeed(ledger, done)
    assert ledger.cancel(queued).status is C
    job = ledger.cancel(running, detail={"by": "alice"})
    assert job.status is C and job.lease_expires_at is None and job.finished_at is not None
    assert ledger.events(running)[-1].detail == {"by": "alice"}
    with pytest.raises(IllegalTransition):
        ledger.cancel(done)
    with pytest.raises(IllegalTransition):
        ledger.cancel(queued)


def test_reaper_requeues_expired_leases_then_fails_at_the_cap(ledger, make_job, clock) -> None:
    job_id = ledger.add_job(make_job(max_attempts=2))
    live = ledger.add_job(make_job())
    claim(ledger, job_id, lease_s=10)
    claim(ledger, live, host="w2", lease_s=10)

    clock.advance(5)
    assert ledger.requeue_expired() == []
    assert ledger.heartbeat(live, worker_host="w2", lease_s=10)  # live keeps its lease
    clock.advance(6)
    assert ledger.requeue_expired() == [job_id]
    job = ledger.get_job(job_id)
    assert (job.status, job.attempts, job.lease_expires_at) == (Q, 1, None)
    event = ledger.events(job_id)[-1]
    assert (event.kind, event.from_status, event.to_status, event.worker) == ("lease-expired", R, Q, "w1")
    assert ledger.get_job(live).status is R

    claim(ledger, job_id, host="w3", lease_s=10)
    assert ledger.heartbeat(live, worker_host="w2", lease_s=10)
    assert ledger.requeue_expired(now=clock.now + timedelta(seconds=9)) == []
    assert set(ledger.requeue_expired(now=clock.now + timedelta(seconds=11))) == {job_id, live}
    job = ledger.get_job(job_id)
    assert (job.status, job.attempts, job.error_type) == (F, 2, LEASE_EXPIRED_ERROR)
    assert ledger.get_job(live).status is Q
    assert ledger.requeue_expired(now=clock.now + timedelta(days=1)) == []


def test_cache_hit_edge_queued_to_succeeded(ledger, make_job) -> None:
    source = ledger.add_job(make_job(seed=5))
    claim(ledger, source)
    succeed(ledger, source)
    hit = ledger.add_job(make_job(seed=5))
    job = ledger.transition(hit, S, kind="cache-hit", detail={"cache_of": source}, cache_of_job_id=source,
                            output_uri=ledger.get_job(source).output_uri)
    assert (job.status, job.cache_of_job_id, job.attempts) == (S, source, 0)


# -- lookups, stars and the trail --------------------------------------------------------------


def test_find_cache_original_needs_an_ok_output(ledger, make_job, clock) -> None:
    first, second, other = make_job(seed=11), make_job(seed=11, no_cache=True), make_job(seed=12)
    ledger.add_jobs([first, second, other])
    assert ledger.find_cache_original(first.job_key) is None
    claim(ledger, first.id)
    succeed(ledger, first.id, weights="old")
    clock.advance(10)
    claim(ledger, second.id)
    succeed(ledger, second.id, weights="new")
    claim(ledger, other.id)

    found = ledger.find_cache_original(first.job_key)
    assert found is not None and found[0].id == second.id
    output = found[1]
    assert (output.uri, output.state, output.file_sha256) == (f"file:///out/{second.id}.mp4", "ok", "f" * 64)
    assert output.verified_at == clock.now
    by_old = ledger.find_cache_original(first.job_key, weights_fingerprint="old")
    assert by_old is not None and by_old[0].id == first.id
    assert ledger.find_cache_original(first.job_key, weights_fingerprint="none") is None
    assert ledger.find_cache_original(other.job_key) is None

    # an output marked corrupt never answers; the older ok one does; both bad: nothing
    changed = ledger.mark_outputs([OutputMark(output.uri, "corrupt", "f" * 64, "sha256 differs", "0" * 64, 10)])
    assert changed == [output.uri]
    fallback = ledger.find_cache_original(first.job_key)
    assert fallback is not None and fallback[0].id == first.id
    assert [e.kind for e in ledger.events(second.id)][-1] == "output-corrupt"
    assert ledger.output(output.uri).detail["actual_sha256"] == "0" * 64  # type: ignore[union-attr]
    ledger.mark_outputs([OutputMark(f"file:///out/{first.id}.mp4", "missing", "f" * 64, "file not found")])
    assert ledger.find_cache_original(first.job_key) is None
    # a check that finds it intact again restores it (an event, a fresh verified stamp and its size)
    clock.advance(5)
    assert ledger.mark_outputs([OutputMark(output.uri, "ok", "f" * 64, "", "f" * 64, 1234)]) == [output.uri]
    assert ledger.mark_outputs([OutputMark(output.uri, "ok", "f" * 64, "", "f" * 64, 1234)]) == []  # no change
    restored = ledger.output(output.uri)
    assert restored is not None and (restored.state, restored.size_bytes, restored.verified_at) == (
        "ok", 1234, clock.now)
    assert [e.kind for e in ledger.events(second.id)][-1] == "output-ok"
    with pytest.raises(ValueError, match="output state"):
        ledger.mark_outputs([OutputMark(output.uri, "gone", "f" * 64)])


def test_set_starred_logs_an_event_without_changing_status(ledger, make_job) -> None:
    job_id = ledger.add_job(make_job())
    assert ledger.set_starred(job_id, True)
    assert not ledger.set_starred(job_id, True)
    job = ledger.get_job(job_id)
    assert job.starred and job.status is Q
    assert ledger.set_starred(job_id, False)
    trail = ledger.events(job_id)
    changes = [(e.kind, e.from_status, e.to_status) for e in trail[1:]]
    assert changes == [("starred", Q, Q), ("unstarred", Q, Q)]
    with pytest.raises(JobNotFound):
        ledger.set_starred("nope", True)


def test_event_trail_records_every_change_in_order(ledger, make_job, clock) -> None:
    job_id = ledger.add_job(make_job())
    claim(ledger, job_id)
    clock.advance(1)
    ledger.record_failure(job_id, error_type="OutOfMemory", error_message="oom", retry=True)
    clock.advance(1)
    claim(ledger, job_id, host="w2")
    clock.advance(1)
    succeed(ledger, job_id)
    ledger.set_starred(job_id, True)

    trail = ledger.events(job_id)
    assert [(e.kind, e.from_status, e.to_status, e.worker) for e in trail] == [
        ("created", None, Q, None),
        ("claimed", Q, R, "w1"),
        ("retried", R, Q, None),
        ("claimed", Q, R, "w2"),
        ("succeeded", R, S, None),
        ("starred", S, S, None),
    ]
    assert [e.id for e in trail] == sorted(e.id for e in trail)
    assert [e.at for e in trail] == sorted(e.at for e in trail)
    assert all(e.job_id == job_id and e.at.tzinfo == UTC for e in trail)
    assert not any(hasattr(ledger, name) for name in ("delete_event", "update_event", "delete_events"))
