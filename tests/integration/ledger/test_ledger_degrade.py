"""Degradation under load in the ledger, on both backends.

``jobs.allow_degrade`` (recorded, not in the key), the farm's load (``Ledger.farm_load``: the
oldest queued interactive job's wait and the busy fraction of live workers), a degraded success
(``degraded_reason``, the "degraded" event with requested vs effective settings), and that a
degraded output never answers another job: no cache hit at submit, none in the worker's lookup, and
its followers are released to render themselves.
"""

from __future__ import annotations

from typing import Any

from farm.ledger import JobStatus, Ledger

WEIGHTS = "w" * 64
REASON = "interactive queue oldest wait 42.0 s >= 30 s (FARM_DEGRADE_WAIT_S)"
#: What the tiny model's draft settings make of its default (final) spec.
DRAFT = {"steps": 4, "cache_threshold": 0.2, "preset": "draft"}


def claim(ledger: Ledger, job_id: str, host: str = "w1"):
    return ledger.claim(job_id, worker_host=host, worker_device="cpu", lease_s=60)


def succeed(ledger: Ledger, job_id: str, *, degraded_reason: str | None = None, host: str | None = None):
    job = ledger.get_job(job_id)
    effective: dict[str, Any] = dict(job.params)
    if degraded_reason is not None:
        effective.update(DRAFT)
    return ledger.record_success(
        job_id, output_uri=f"file:///out/{job_id}.mp4", file_sha256="f" * 64, frames_sha256="e" * 64,
        effective_params=effective, weights_fingerprint=WEIGHTS, env_fingerprint={"torch": "2.13.0"},
        timings={"render_s": 0.5}, worker_host=host, degraded_reason=degraded_reason,
    )


def seen(ledger: Ledger, name: str, state: str) -> None:
    ledger.worker_seen(name, host="h", device="cpu", pid=1, state=state)


def test_allow_degrade_is_recorded_but_not_in_the_key(ledger, make_job) -> None:
    allowed, plain = make_job(seed=5, allow_degrade=True), make_job(seed=5)
    assert allowed.job_key == plain.job_key and (allowed.allow_degrade, plain.allow_degrade) == (True, False)
    ledger.add_jobs([allowed])
    job = ledger.get_job(allowed.id)
    assert job.allow_degrade is True and job.degraded_reason is None
    assert job.to_dict()["allow_degrade"] is True and job.to_dict()["degraded_reason"] is None


def test_farm_load_reads_the_oldest_interactive_wait(ledger, make_job, clock) -> None:
    empty = ledger.farm_load(live_within_s=60)
    assert (empty.oldest_interactive_wait_s, empty.serving_workers, empty.busy_workers) == (None, 0, 0)
    assert empty.busy_fraction is None
    first = make_job(seed=1, priority="interactive")
    ledger.add_jobs([first, make_job(seed=2)])  # a batch job does not count
    clock.advance(10)
    ledger.add_jobs([make_job(seed=1, priority="interactive"),   # a follower of the first: not counted
                     make_job(seed=3, priority="interactive")])
    clock.advance(32.5)
    assert ledger.farm_load(live_within_s=60).oldest_interactive_wait_s == 42.5
    assert claim(ledger, first.id) is not None  # claimed: no longer waiting; the next one has waited 32.5 s
    assert ledger.farm_load(live_within_s=60).oldest_interactive_wait_s == 32.5
    # per route: only the models asked about (the jobs' own GPUs); another model's queue does not count
    other = make_job(seed=4, priority="interactive", model="tiny-dense")
    ledger.add_jobs([other])
    clock.advance(5)
    assert ledger.farm_load(live_within_s=60, models={"tiny"}).oldest_interactive_wait_s == 37.5
    assert ledger.farm_load(live_within_s=60, models={"tiny-dense"}).oldest_interactive_wait_s == 5.0
    assert ledger.farm_load(live_within_s=60, models={"wan2.2-t2v-a14b"}).oldest_interactive_wait_s is None


def test_farm_load_counts_live_serving_workers_and_the_busy_ones(ledger, make_job, clock) -> None:
    seen(ledger, "gone@h", "busy")
    clock.advance(120)  # gone@h was last seen 120 s ago: not live
    for name, state in [("idle@h", "idle"), ("busy@h", "busy"), ("stopped@h", "stopped"),
                        ("open@h", "circuit_open"), ("starting@h", "starting"), ("lagging@h", "idle")]:
        seen(ledger, name, state)
    job = make_job(seed=9)
    ledger.add_jobs([job])
    assert claim(ledger, job.id, host="lagging@h") is not None  # its row still says idle: it is busy
    load = ledger.farm_load(live_within_s=60)
    assert (load.serving_workers, load.busy_workers) == (3, 2)
    assert load.busy_fraction == 2 / 3
    assert ledger.farm_load(live_within_s=600).serving_workers == 4  # gone@h is live again in a wider window


def test_a_degraded_success_records_the_reason_and_the_event(ledger, make_job) -> None:
    job = make_job(seed=11, allow_degrade=True)
    ledger.add_jobs([job])
    claim(ledger, job.id)
    done = succeed(ledger, job.id, degraded_reason=REASON, host="w1")
    assert done.status is JobStatus.SUCCEEDED and done.degraded_reason == REASON
    assert done.params["steps"] == 8 and (done.effective_params or {})["steps"] == 4
    trail = ledger.events(job.id)
    assert [e.kind for e in trail][-2:] == ["degraded", "succeeded"]
    degraded = trail[-2]
    assert (degraded.from_status, degraded.to_status, degraded.worker) == (JobStatus.RUNNING, JobStatus.RUNNING, "w1")
    assert degraded.detail == {"reason": REASON,
                               "requested": {"steps": 8, "cache_threshold": None, "preset": "final"},
                               "effective": DRAFT}
    # A success as asked writes no "degraded" event and no reason.
    plain = make_job(seed=12)
    ledger.add_jobs([plain])
    claim(ledger, plain.id)
    assert succeed(ledger, plain.id).degraded_reason is None
    assert "degraded" not in [e.kind for e in ledger.events(plain.id)]


def test_a_degraded_output_answers_no_other_job(ledger, make_job) -> None:
    ledger.register_model("tiny", WEIGHTS, worker="w1")
    degraded = make_job(seed=21, allow_degrade=True)
    ledger.add_jobs([degraded])
    claim(ledger, degraded.id)
    succeed(ledger, degraded.id, degraded_reason=REASON)

    # Not at submit (dedup), not in the worker's lookup after loading the model.
    again = make_job(seed=21)
    admitted = ledger.admit([again])
    assert admitted.answered == {} and admitted.following == {} and [j for j, _ in admitted.to_send] == [again.id]
    assert ledger.find_cache_original(again.job_key, WEIGHTS) is None

    # A render as asked of the same key answers later jobs.
    claim(ledger, again.id)
    succeed(ledger, again.id)
    third = make_job(seed=21)
    assert ledger.admit([third]).answered == {third.id: again.id}
    found = ledger.find_cache_original(third.job_key, WEIGHTS)
    # the render as asked, or the cache hit it answered (equal timestamps on SQLite): never the degraded one
    assert found is not None and found[0].id in (again.id, third.id) and found[0].degraded_reason is None


def test_followers_of_a_degraded_leader_render_themselves(ledger, make_job) -> None:
    leader = make_job(seed=31, allow_degrade=True)
    ledger.add_jobs([leader])
    follower = make_job(seed=31)
    assert ledger.admit([follower]).following == {follower.id: leader.id}
    ledger.mark_enqueued([leader.id])
    claim(ledger, leader.id)
    succeed(ledger, leader.id, degraded_reason=REASON)

    job = ledger.get_job(follower.id)
    assert job.status is JobStatus.QUEUED and job.cache_of_job_id is None and job.enqueued_at is None
    assert not job.follower and job.output_uri is None
    last = ledger.events(follower.id)[-1]
    assert last.kind == "leader-lost"
    assert last.detail == {"leader": leader.id, "leader_status": "succeeded", "reason": "the leader rendered degraded"}
    assert follower.id in [job_id for job_id, _ in ledger.jobs_to_enqueue()]  # the reaper sends it
