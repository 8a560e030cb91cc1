"""Issue 4's fault tests: killed workers, redelivery past the visibility timeout, a broker restart, a poison job.

Real ``farm worker`` processes, a private Redis with AOF, a fresh Postgres ledger, the tiny model
on one CPU thread.
"""

from __future__ import annotations

import time

from farm_harness import FarmEnv, RedisServer, WorkerProc, assert_exactly_once, claimed_count, wait_until

from farm.ledger import JobRecord


def owner_of(env: FarmEnv, job: JobRecord) -> WorkerProc | None:
    host = job.worker_host or ""
    return next((w for w in env.workers if w.alive() and host == w.name), None)


def test_sigkill_mid_render_three_times(farm_env: FarmEnv) -> None:
    """SIGKILL a worker in the middle of a render, three times in one batch.

    Every job ends succeeded exactly once, the killed jobs with more than one attempt.
    """
    farm_env.overrides.update(FARM_LEASE_S="5")
    farm_env.start_worker("a", wait=False)
    farm_env.start_worker("b")
    count = 12
    tags = [{"fault": "sleep:3"} if i % 2 == 0 else None for i in range(count)]
    ids = farm_env.submit(farm_env.new_jobs(count, prefix="kill", tags=tags))
    sleepers = {ids[i] for i in range(count) if tags[i]}
    started = time.monotonic()
    killed: list[str] = []
    for k in range(3):
        def victim() -> tuple[JobRecord, WorkerProc] | None:
            for job in farm_env.jobs(sorted(sleepers - set(killed))):
                if job.status.value == "running" and job.attempts == 1:
                    worker = owner_of(farm_env, job)
                    if worker is not None:
                        return job, worker
            return None

        job, worker = wait_until(victim, 120, what="a render in progress to kill")
        worker.kill()  # SIGKILL, mid-render
        killed.append(job.id)
        farm_env.start_worker(f"r{k}", wait=False)
    jobs = assert_exactly_once(farm_env, [j.id for j in farm_env.wait_terminal(ids, 240)])
    by_id = {j.id: j for j in jobs}
    for job_id in killed:
        kinds = [e.kind for e in farm_env.ledger.events(job_id)]
        assert by_id[job_id].attempts >= 2, kinds
        assert "lease-expired" in kinds, kinds
    wall = time.monotonic() - started
    print(f"\n[numbers] SIGKILL mid-render: {len(killed)} workers killed, {len(jobs)}/{count} jobs succeeded exactly "
          f"once, attempts of the killed jobs {[by_id[j].attempts for j in killed]}, {wall:.1f} s")


def test_redelivery_past_visibility_timeout_is_dropped(farm_env: FarmEnv) -> None:
    """A render longer than the visibility timeout.

    Redis hands the message to a second worker, which drops it (the job runs under a live
    lease); one claim, one render.
    """
    farm_env.overrides.update(FARM_VISIBILITY_TIMEOUT_S="3", FARM_LEASE_S="5")
    farm_env.start_worker("a", wait=False)
    farm_env.start_worker("b")
    farm_env.wait_ready(farm_env.workers[0])
    [job_id] = farm_env.submit(farm_env.new_jobs(1, prefix="long", tags=[{"fault": "sleep:14"}]))
    [job] = farm_env.wait_terminal([job_id], 120)
    assert job.status.value == "succeeded" and job.attempts == 1
    assert claimed_count(farm_env, job_id) == 1
    renderer = (job.worker_host or "")
    drops = [
        (w.name, line) for w in farm_env.workers for line in w.text().splitlines()
        if job_id in line and "not claimable (status running" in line
    ]
    assert drops, "the redelivered message never reached the other worker"
    assert all(name != renderer for name, _ in drops), drops
    assert_exactly_once(farm_env, [job_id])
    print(f"\n[numbers] visibility timeout 3 s, 14 s render: message redelivered {len(drops)} time(s), "
          f"dropped by {sorted({n for n, _ in drops})}; 1 claim, 1 render by {renderer}")


def test_broker_restart_mid_batch(farm_env: FarmEnv, redis_server: RedisServer) -> None:
    """Kill the broker (SIGKILL) mid-batch and start it again on the same port and AOF dir.

    Every job completes, exactly once.
    """
    farm_env.start_worker("a")
    ids = farm_env.submit(farm_env.new_jobs(14, prefix="broker"))
    wait_until(lambda: sum(j.status.value == "succeeded" for j in farm_env.jobs(ids)) >= 3, 120,
               what="3 jobs done before the broker restart")
    started = time.monotonic()
    redis_server.kill()
    time.sleep(2)
    redis_server.start()
    jobs = farm_env.wait_terminal(ids, 180)
    assert_exactly_once(farm_env, ids)
    assert farm_env.workers[0].alive()
    text = farm_env.workers[0].text()
    assert "Connection to broker lost" in text or "Cannot connect" in text or "Error" in text
    print(f"\n[numbers] broker killed and restarted mid-batch: {len(jobs)}/{len(ids)} jobs succeeded exactly once, "
          f"batch finished {time.monotonic() - started:.1f} s after the kill")


def test_poison_job_stops_at_attempt_cap(farm_env: FarmEnv) -> None:
    """A job that kills its worker every time ends failed after FARM_MAX_ATTEMPTS with the reason.

    The supervisor (``farm worker --devices cpu``) restarts the worker; the other jobs succeed.
    """
    farm_env.overrides.update(FARM_MAX_ATTEMPTS="2", FARM_LEASE_S="5")
    supervisor = farm_env.start_supervisor("cpu")
    tags = [None, None, {"fault": "crash"}, None, None, None]
    ids = farm_env.submit(farm_env.new_jobs(len(tags), prefix="poison", tags=tags))
    jobs = farm_env.wait_terminal(ids, 240)
    poison = jobs[2]
    assert poison.status.value == "failed", poison
    assert poison.attempts == 2
    assert poison.error_type == "LeaseExpired"
    assert poison.error_message and "attempt 2 of 2" in poison.error_message
    kinds = [e.kind for e in farm_env.ledger.events(poison.id)]
    assert kinds.count("claimed") == 2 and kinds.count("lease-expired") == 2, kinds
    assert_exactly_once(farm_env, [j.id for i, j in enumerate(jobs) if i != 2])
    assert supervisor.alive(), "the supervisor must keep running"
    crashes = supervisor.text().count("crashed (status 137")
    assert crashes == 2, supervisor.text()[-3000:]
    print(f"\n[numbers] poison job: {crashes} worker crashes survived (supervisor restarts), failed after "
          f"{poison.attempts} attempts ({poison.error_type}: {poison.error_message}); 5/5 other jobs succeeded")
