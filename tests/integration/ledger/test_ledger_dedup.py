"""Dedup inside ``add_jobs`` / ``create_batch`` on both backends.

Cache hits (queued -> succeeded at once from a job rendered with the model's registered weights),
followers (queued behind a leader with the same job key, never enqueued or claimed), their
resolution when the leader succeeds, and their release when it fails or is cancelled.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy.exc

from farm.errors import IllegalTransition
from farm.ledger import JobStatus, Ledger

Q, R, S, F, C = (JobStatus(s) for s in ("queued", "running", "succeeded", "failed", "cancelled"))
WEIGHTS = "wf-1"


def claim(ledger: Ledger, job_id: str, host: str = "w1", lease_s: float = 60):
    return ledger.claim(job_id, worker_host=host, worker_device="cuda:0", lease_s=lease_s)


def succeed(ledger: Ledger, job_id: str, *, weights: str = WEIGHTS, worker_host: str | None = None):
    return ledger.record_success(
        job_id, output_uri=f"file:///out/{job_id}.mp4", file_sha256="f" * 64, frames_sha256="e" * 64,
        effective_params={"steps": 4, "id": job_id}, weights_fingerprint=weights,
        env_fingerprint={"torch": "2.13.0"}, timings={"render_s": 1.5}, worker_host=worker_host,
    )


def rendered(ledger: Ledger, make_job, *, seed: int, weights: str = WEIGHTS) -> str:
    """A job that went queued -> running -> succeeded with ``weights``."""
    job_id = ledger.add_job(make_job(seed=seed, no_cache=True))
    assert claim(ledger, job_id) is not None
    succeed(ledger, job_id, weights=weights)
    return job_id


def kinds(ledger: Ledger, job_id: str) -> list[str]:
    return [e.kind for e in ledger.events(job_id)]


def enqueue_ids(ledger: Ledger) -> set[str]:
    return {job_id for job_id, _ in ledger.jobs_to_enqueue()}


# -- followers -----------------------------------------------------------------------------------


def test_distinct_jobs_are_all_normal_and_to_be_enqueued(ledger, make_job) -> None:
    new = [make_job(seed=s) for s in (1, 2, 3)]
    ids = ledger.add_jobs(new)
    for job_id in ids:
        job = ledger.get_job(job_id)
        assert (job.status, job.cache_of_job_id, job.follower) == (Q, None, False)
    assert enqueue_ids(ledger) == set(ids)


def test_same_key_within_one_call_first_leads_later_follow(ledger, make_job) -> None:
    a, b, c, other = make_job(seed=7), make_job(seed=7), make_job(seed=7), make_job(seed=8)
    ledger.add_jobs([a, b, c, other])
    leader = ledger.get_job(a.id)
    assert leader.cache_of_job_id is None and not leader.follower
    for follower_id in (b.id, c.id):
        follower = ledger.get_job(follower_id)
        assert (follower.status, follower.cache_of_job_id, follower.follower) == (Q, a.id, True)
        [created] = ledger.events(follower_id)
        assert created.kind == "created" and created.detail is not None and created.detail["follows"] == a.id
    assert enqueue_ids(ledger) == {a.id, other.id}
    # A follower's message (should one ever arrive) is dropped: it cannot be claimed.
    assert claim(ledger, b.id) is None
    assert ledger.get_job(b.id).status is Q and kinds(ledger, b.id) == ["created"]


def test_follower_of_a_queued_or_running_leader_added_earlier(ledger, make_job) -> None:
    queued_leader = ledger.add_job(make_job(seed=1))
    running_leader = ledger.add_job(make_job(seed=2))
    claim(ledger, running_leader)
    f1, f2 = ledger.add_jobs([make_job(seed=1), make_job(seed=2)])
    assert ledger.get_job(f1).cache_of_job_id == queued_leader
    assert ledger.get_job(f2).cache_of_job_id == running_leader
    # A third with the same key follows the leader, never another follower.
    f3 = ledger.add_job(make_job(seed=1))
    assert ledger.get_job(f3).cache_of_job_id == queued_leader


def test_no_leader_among_finished_jobs(ledger, make_job) -> None:
    failed = ledger.add_job(make_job(seed=1, max_attempts=1))
    claim(ledger, failed)
    ledger.record_failure(failed, error_type="Boom", error_message="x", retry=False)
    cancelled = ledger.add_job(make_job(seed=2))
    ledger.cancel(cancelled)
    done = rendered(ledger, make_job, seed=3)  # succeeded, but no model fingerprint registered
    ids = ledger.add_jobs([make_job(seed=1), make_job(seed=2), make_job(seed=3)])
    for job_id in ids:
        job = ledger.get_job(job_id)
        assert (job.status, job.cache_of_job_id) == (Q, None)
    assert done not in ids


def test_no_cache_jobs_never_follow_and_never_hit(ledger, make_job) -> None:
    original = rendered(ledger, make_job, seed=5)
    ledger.register_model(ledger.get_job(original).model_name, WEIGHTS, worker="w1")
    leader = ledger.add_job(make_job(seed=6))
    forced_hit, forced_follow = ledger.add_jobs([make_job(seed=5, no_cache=True), make_job(seed=6, no_cache=True)])
    for job_id in (forced_hit, forced_follow):
        job = ledger.get_job(job_id)
        assert (job.status, job.cache_of_job_id, job.no_cache) == (Q, None, True)
    assert enqueue_ids(ledger) == {leader, forced_hit, forced_follow}


# -- cache hits ----------------------------------------------------------------------------------


def test_cache_hit_when_the_model_fingerprint_matches(ledger, make_job, clock) -> None:
    original_id = rendered(ledger, make_job, seed=9)
    original = ledger.get_job(original_id)
    ledger.register_model(original.model_name, WEIGHTS, worker="w1")
    clock.advance(30)
    new = make_job(seed=9)
    [job_id] = ledger.add_jobs([new])

    job = ledger.get_job(job_id)
    assert job.status is S and job.cache_hit and job.cache_of_job_id == original_id
    for name in ("output_uri", "file_sha256", "frames_sha256", "effective_params", "weights_fingerprint",
                 "env_fingerprint"):
        assert getattr(job, name) == getattr(original, name), name
    assert job.timings == {"cache_hit": True}
    assert job.started_at == job.finished_at == clock.now
    assert job.attempts == 0 and job.progress == 1.0 and job.worker_host is None
    created, hit = ledger.events(job_id)
    assert (created.kind, created.to_status) == ("created", Q)
    assert (hit.kind, hit.from_status, hit.to_status, hit.detail) == ("cache-hit", Q, S, {"original": original_id})
    assert job_id not in enqueue_ids(ledger)


def test_no_cache_hit_with_other_weights_or_no_registered_model(ledger, make_job) -> None:
    original_id = rendered(ledger, make_job, seed=9, weights="old")
    job_id = ledger.add_job(make_job(seed=9))  # no fingerprint registered
    assert ledger.get_job(job_id).status is Q
    ledger.cancel(job_id)
    ledger.register_model(ledger.get_job(original_id).model_name, "new", worker="w2")
    job_id = ledger.add_job(make_job(seed=9))
    assert (ledger.get_job(job_id).status, ledger.get_job(job_id).cache_of_job_id) == (Q, None)


def test_cache_hits_prefer_the_rendered_original(ledger, make_job, clock) -> None:
    original_id = rendered(ledger, make_job, seed=4)
    ledger.register_model(ledger.get_job(original_id).model_name, WEIGHTS, worker="w1")
    first_hit = ledger.add_job(make_job(seed=4))
    clock.advance(5)
    second_hit = ledger.add_job(make_job(seed=4))
    assert ledger.get_job(first_hit).cache_of_job_id == original_id
    assert ledger.get_job(second_hit).cache_of_job_id == original_id


def test_create_batch_applies_dedup(ledger, make_job) -> None:
    original_id = rendered(ledger, make_job, seed=1)
    ledger.register_model(ledger.get_job(original_id).model_name, WEIGHTS, worker="w1")
    items = [make_job(seed=1, batch_index=0), make_job(seed=2, batch_index=1), make_job(seed=2, batch_index=2)]
    batch_id, created = ledger.create_batch("d" * 64, "dedup", "m.yaml", items)
    assert created
    hit, leader, follower = ledger.batch_jobs(batch_id)
    assert (hit.status, hit.cache_of_job_id, hit.batch_index) == (S, original_id, 0)
    assert (leader.status, leader.cache_of_job_id, leader.batch_index) == (Q, None, 1)
    assert (follower.status, follower.cache_of_job_id, follower.batch_index) == (Q, leader.id, 2)
    assert ledger.jobs_to_enqueue(batch_id=batch_id) == [(leader.id, "batch.tiny")]
    assert ledger.batch_counts(batch_id)[S] == 1


# -- resolution ----------------------------------------------------------------------------------


def test_record_success_answers_the_followers(ledger, make_job, clock) -> None:
    leader, f1, f2 = ledger.add_jobs([make_job(seed=3), make_job(seed=3), make_job(seed=3)])
    claim(ledger, leader)
    clock.advance(10)
    succeed(ledger, leader, worker_host="w1")
    done = ledger.get_job(leader)
    for follower_id in (f1, f2):
        job = ledger.get_job(follower_id)
        assert (job.status, job.cache_of_job_id, job.attempts) == (S, leader, 0)
        assert job.output_uri == done.output_uri and job.effective_params == done.effective_params
        assert job.timings == {"cache_hit": True} and job.finished_at == clock.now
        assert ledger.events(follower_id)[-1].detail == {"original": leader}
        assert kinds(ledger, follower_id) == ["created", "cache-hit"]
    assert kinds(ledger, leader) == ["created", "claimed", "succeeded"]


def test_record_cache_hit_answers_a_running_job_and_its_followers(ledger, make_job, clock) -> None:
    original_id = rendered(ledger, make_job, seed=2)
    leader, follower = ledger.add_jobs([make_job(seed=2), make_job(seed=2)])  # no fingerprint: leader
    assert ledger.get_job(follower).cache_of_job_id == leader
    claim(ledger, leader, host="w1")
    with pytest.raises(IllegalTransition):
        ledger.record_cache_hit(leader, original_id, worker_host="w2")  # not the owner
    assert ledger.get_job(leader).status is R and ledger.get_job(follower).status is Q
    clock.advance(3)
    job = ledger.record_cache_hit(leader, original_id, worker_host="w1")
    assert (job.status, job.cache_of_job_id, job.timings) == (S, original_id, {"cache_hit": True})
    assert job.output_uri == ledger.get_job(original_id).output_uri and job.lease_expires_at is None
    assert ledger.events(leader)[-1].kind == "cache-hit"
    assert ledger.events(leader)[-1].detail == {"original": original_id}
    answered = ledger.get_job(follower)
    assert (answered.status, answered.cache_of_job_id) == (S, leader)
    assert answered.output_uri == job.output_uri


def test_record_cache_hit_needs_a_succeeded_original(ledger, make_job) -> None:
    other = ledger.add_job(make_job(seed=1))
    job_id = ledger.add_job(make_job(seed=2))
    claim(ledger, job_id)
    before = kinds(ledger, job_id)
    with pytest.raises(IllegalTransition):
        ledger.record_cache_hit(job_id, other)
    assert ledger.get_job(job_id).status is R and kinds(ledger, job_id) == before


def _assert_released(ledger: Ledger, follower_id: str, leader_id: str, leader_status: JobStatus) -> None:
    job = ledger.get_job(follower_id)
    assert (job.status, job.cache_of_job_id, job.enqueued_at, job.follower) == (Q, None, None, False)
    last = ledger.events(follower_id)[-1]
    assert (last.kind, last.from_status, last.to_status) == ("leader-lost", Q, Q)
    assert last.detail == {"leader": leader_id, "leader_status": leader_status.value}
    assert follower_id in enqueue_ids(ledger)


def test_followers_released_when_the_leader_fails_for_good(ledger, make_job) -> None:
    leader, follower = ledger.add_jobs([make_job(seed=1, max_attempts=2), make_job(seed=1)])
    claim(ledger, leader)
    ledger.record_failure(leader, error_type="Oom", error_message="x", retry=True)  # retried: still leads
    assert ledger.get_job(follower).cache_of_job_id == leader
    claim(ledger, leader)
    ledger.record_failure(leader, error_type="Oom", error_message="x", retry=True)  # at the cap: fails
    assert ledger.get_job(leader).status is F
    _assert_released(ledger, follower, leader, F)
    # The released job is a normal job now: it can be claimed and lead new duplicates.
    assert claim(ledger, follower) is not None
    newcomer = ledger.add_job(make_job(seed=1))
    assert ledger.get_job(newcomer).cache_of_job_id == follower


def test_followers_released_when_the_leader_is_cancelled(ledger, make_job) -> None:
    leader, f1, f2 = ledger.add_jobs([make_job(seed=1), make_job(seed=1), make_job(seed=1)])
    ledger.cancel(f2)  # a cancelled follower stays cancelled
    ledger.cancel(leader)
    _assert_released(ledger, f1, leader, C)
    assert ledger.get_job(f2).status is C and ledger.get_job(f2).cache_of_job_id == leader


def test_followers_released_when_the_leaders_last_lease_expires(ledger, make_job, clock) -> None:
    leader, follower = ledger.add_jobs([make_job(seed=1, max_attempts=1), make_job(seed=1)])
    claim(ledger, leader, lease_s=30)
    assert ledger.requeue_expired(clock.now + timedelta(seconds=31)) == [leader]
    assert ledger.get_job(leader).status is F
    _assert_released(ledger, follower, leader, F)


def test_followers_kept_when_the_leaders_lease_expires_with_attempts_left(ledger, make_job, clock) -> None:
    leader, follower = ledger.add_jobs([make_job(seed=1, max_attempts=2), make_job(seed=1)])
    claim(ledger, leader, lease_s=30)
    assert ledger.requeue_expired(clock.now + timedelta(seconds=31)) == [leader]
    assert ledger.get_job(leader).status is Q and ledger.get_job(leader).enqueued_at is None
    assert ledger.get_job(follower).cache_of_job_id == leader


def test_a_failed_dedup_call_writes_nothing(ledger, make_job) -> None:
    leader = ledger.add_job(make_job(seed=1))
    good, bad = make_job(seed=1), make_job(seed=2, parent_job_id="0" * 36)  # unknown parent: FK fails
    with pytest.raises(sqlalchemy.exc.IntegrityError):  # unknown parent: the FK fails
        ledger.add_jobs([good, bad])
    assert [j.id for j in ledger.list_jobs()] == [leader]


# -- producers racing ----------------------------------------------------------------------------


def test_concurrent_producers_elect_exactly_one_leader(ledger_url: str, make_job, clock) -> None:
    n = 6
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    duplicates = [make_job(seed=42) for _ in range(n)]

    def produce(i: int) -> None:
        try:
            with Ledger(ledger_url, clock=clock) as mine:
                filler = [make_job(seed=1000 + 100 * i + k) for k in range(100)]
                barrier.wait()
                mine.add_jobs([*filler, duplicates[i]])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    with Ledger(ledger_url) as reader:
        jobs = [reader.get_job(d.id) for d in duplicates]
    leaders = [j for j in jobs if j.cache_of_job_id is None]
    assert len(leaders) == 1
    assert all(j.cache_of_job_id == leaders[0].id for j in jobs if j is not leaders[0])


def test_the_generic_transition_also_resolves_and_releases_followers(ledger, make_job) -> None:
    leader, follower = ledger.add_jobs([make_job(seed=1), make_job(seed=1)])
    claim(ledger, leader)
    ledger.transition(leader, "failed", kind="failed")
    _assert_released(ledger, follower, leader, F)

    leader, follower = ledger.add_jobs([make_job(seed=2), make_job(seed=2)])
    ledger.transition(leader, "succeeded", kind="cache-hit", output_uri="file:///o.mp4", weights_fingerprint="w")
    answered = ledger.get_job(follower)
    assert (answered.status, answered.cache_of_job_id, answered.output_uri) == (S, leader, "file:///o.mp4")
