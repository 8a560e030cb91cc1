"""Outputs the farm can be trusted with.

A corrupt or missing file is never answered from by the cache, ``farm audit --repair`` restores it
(MATCH, audit clean), and a permanent storage error fails its job at once without pushing a healthy
worker towards its circuit breaker.

Real ``farm worker`` processes, a private Redis, a fresh Postgres ledger, the tiny model on one CPU
thread; jobs are submitted through :class:`farm.client.Client` (the producer path, with its quick
check of the file) and the ``farm`` console script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from farm_harness import FARM, SMALL, FarmEnv, wait_until

from farm.client import Client
from farm.ledger import JobRecord
from farm.store import OutputStore, file_sha256
from farm.store.layout import QUARANTINE_DIRNAME


@pytest.fixture
def client(farm_env: FarmEnv) -> Iterator[Client]:
    with Client(settings=farm_env.settings()) as c:
        yield c


def submit(client: Client, seed: int, **extra: Any) -> str:
    [job_id] = client.submit("a lighthouse in a storm, slow pan", seed=seed, steps=SMALL["steps"],
                             num_frames=SMALL["num_frames"], **extra)
    return job_id


def finished(farm_env: FarmEnv, job_id: str) -> JobRecord:
    [job] = farm_env.wait_terminal([job_id], 120)
    return job


def video_of(client: Client, job: JobRecord) -> Path:
    path = client.store.locate(job.output_uri)
    assert path is not None and path.is_file(), job.output_uri
    return path


def flip_a_byte(path: Path, *, keep_mtime: bool = False) -> None:
    """Corrupt a file in place, same size (a bit flip); optionally with its old mtime kept (rot)."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def farm_cli(farm_env: FarmEnv, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FARM, *args], env=farm_env.env(), capture_output=True, text=True, timeout=timeout)


def worker_row(farm_env: FarmEnv, name: str) -> Any:
    return next(w for w in farm_env.ledger.list_workers() if w.name == name)


def kinds(farm_env: FarmEnv, job_id: str) -> list[str]:
    return [e.kind for e in farm_env.ledger.events(job_id)]


def test_a_corrupt_output_is_never_answered_from(farm_env: FarmEnv, client: Client) -> None:
    """(1) A file changed behind the ledger's back.

    The producer's quick check sees it changed (mtime past the verified stamp) and sends the job to
    a worker, whose sha256 check finds it corrupt: the ledger marks it, the job renders, and the
    writer quarantines the damaged directory and writes it anew. (2) A file ``farm audit`` flagged,
    whose mtime was kept (bit rot): the ledger's mark alone keeps the cache off it, at submit time
    and in the worker.
    """
    worker = farm_env.start_worker("a")
    original = finished(farm_env, submit(client, 7))
    assert original.status.value == "succeeded" and original.cache_of_job_id is None
    video = video_of(client, original)

    # an intact file answers an identical job at once, without a worker
    hit = client.submit_detailed("a lighthouse in a storm, slow pan", seed=7, steps=SMALL["steps"],
                                 num_frames=SMALL["num_frames"])
    assert (hit.first_status, hit.cache_of, hit.enqueued) == ("succeeded", original.id, 0)

    # (1) changed on disk, the ledger not told
    flip_a_byte(video)
    second = client.submit_detailed("a lighthouse in a storm, slow pan", seed=7, steps=SMALL["steps"],
                                    num_frames=SMALL["num_frames"])
    assert second.first_status == "queued" and second.cache_of is None and second.enqueued == 1
    rerendered = finished(farm_env, second.job_ids[0])
    assert rerendered.status.value == "succeeded", (rerendered.error_type, rerendered.error_message)
    assert rerendered.cache_of_job_id is None and rerendered.attempts == 1  # rendered, not answered
    assert rerendered.frames_sha256 == original.frames_sha256
    assert (rerendered.timings or {}).get("quarantined"), rerendered.timings
    assert file_sha256(video) == original.file_sha256  # written anew, bit for bit
    assert kinds(farm_env, original.id)[-2:] == ["output-corrupt", "output-ok"]
    quarantined = list((client.store.root / QUARANTINE_DIRNAME).iterdir())
    assert len(quarantined) == 1 and file_sha256(quarantined[0] / "video.mp4") != original.file_sha256

    # (2) bit rot: same size, same mtime; the audit finds it and marks it
    flip_a_byte(video, keep_mtime=True)
    audit = farm_cli(farm_env, "audit")
    assert audit.returncode == 1 and f"CORRUPT  {original.id}" in audit.stdout, audit.stdout + audit.stderr
    output = farm_env.ledger.output(str(original.output_uri))
    assert output is not None and output.state == "corrupt"
    assert client.store.vouches(output)  # the quick look alone would have trusted it: the mark decides
    third = client.submit_detailed("a lighthouse in a storm, slow pan", seed=7, steps=SMALL["steps"],
                                   num_frames=SMALL["num_frames"])
    assert third.first_status == "queued" and third.cache_of is None
    again = finished(farm_env, third.job_ids[0])
    assert again.status.value == "succeeded" and again.cache_of_job_id is None
    assert file_sha256(video) == original.file_sha256
    row = worker_row(farm_env, worker.name)
    assert row.state != "circuit_open" and row.consecutive_failures == 0
    assert "not answered from job" in worker.text() and "corrupt" in worker.text()


def test_audit_repair_restores_corrupt_and_missing_outputs(farm_env: FarmEnv, client: Client) -> None:
    """``farm audit --repair``.

    A corrupt file and a deleted output directory are quarantined / re-rendered by a worker,
    verified (MATCH on stdout), the audit after is clean, the cache answers from them again, and the
    worker never retried nor counted a failure.
    """
    farm_env.overrides.update(FARM_CIRCUIT_BREAKER_FAILURES="2")
    worker = farm_env.start_worker("a")
    first, second = (finished(farm_env, submit(client, seed)) for seed in (21, 22))
    [cached] = client.submit("a lighthouse in a storm, slow pan", seed=21, steps=SMALL["steps"],
                             num_frames=SMALL["num_frames"])
    assert farm_env.ledger.get_job(cached).cache_of_job_id == first.id
    flip_a_byte(video_of(client, first))
    shutil.rmtree(video_of(client, second).parent)

    proc = farm_cli(farm_env, "audit", "--repair", "--timeout", "150", "--poll", "0.2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"CORRUPT  {first.id}" in proc.stdout and f"CORRUPT  {cached}" in proc.stdout
    assert f"MISSING  {second.id}" in proc.stdout
    match_lines = [line for line in proc.stdout.splitlines() if line.startswith("MATCH")]
    assert len(match_lines) == 2, out
    assert any(str(first.output_uri) in line and "(corrupt; 2 job(s)" in line for line in match_lines), out
    assert any(str(second.output_uri) in line and "(missing; 1 job(s)" in line for line in match_lines), out
    assert "2 bad output(s): 2 repaired (MATCH); audit after repair: clean" in proc.stderr

    for job in (first, second):
        assert file_sha256(video_of(client, job)) == job.file_sha256
        output = farm_env.ledger.output(str(job.output_uri))
        assert output is not None and output.state == "ok"
    assert kinds(farm_env, cached)[-2:] == ["output-corrupt", "output-ok"]
    children = [j for j in farm_env.ledger.list_jobs(limit=50) if j.parent_job_id in (first.id, second.id)]
    assert len(children) == 2
    assert all(c.status.value == "succeeded" and c.attempts == 1 and c.cache_of_job_id is None for c in children)
    assert len(list((client.store.root / QUARANTINE_DIRNAME).iterdir())) == 1  # the corrupt one; the other was gone

    clean = farm_cli(farm_env, "audit")
    assert clean.returncode == 0 and "5 checked: 5 ok, 0 missing, 0 corrupt" in clean.stderr  # 3 + 2 re-renders
    hit = client.submit_detailed("a lighthouse in a storm, slow pan", seed=22, steps=SMALL["steps"],
                                 num_frames=SMALL["num_frames"])
    assert hit.first_status == "succeeded" and hit.cache_of is not None
    # (the workers row follows at the next presence beat, FARM_HEARTBEAT_S = 1 s here)
    row = wait_until(lambda: (r := worker_row(farm_env, worker.name)).state == "idle" and r, 30, what="idle")
    assert row.consecutive_failures == 0 and row.jobs_failed == 0


def test_permanent_storage_errors_fail_fast_and_leave_the_breaker_closed(
    farm_env: FarmEnv, client: Client, tmp_path: Path
) -> None:
    """An output location the store refuses (it resolves outside the output root) fails each job at once.

    One attempt, no retries. It does not count towards the circuit breaker: three such failures in
    a row with a breaker at 2, and the worker still renders the next job.
    """
    farm_env.overrides.update(FARM_CIRCUIT_BREAKER_FAILURES="2")
    worker = farm_env.start_worker("a")
    first = finished(farm_env, submit(client, 31))
    directory = video_of(client, first).parent
    outside = tmp_path / "elsewhere"
    shutil.move(directory, outside)
    directory.symlink_to(outside, target_is_directory=True)

    refused = [submit(client, 31, no_cache=True) for _ in range(3)]
    jobs = farm_env.wait_terminal(refused, 120)
    for job in jobs:
        assert (job.status.value, job.error_type, job.attempts) == ("failed", "OutputRefused", 1), job
        assert "outside the output root" in str(job.error_message)
    row = wait_until(lambda: (r := worker_row(farm_env, worker.name)).jobs_failed == 3 and r, 30, what="3 failed")
    assert row.state != "circuit_open" and row.consecutive_failures == 0
    innocent = finished(farm_env, submit(client, 32))
    assert innocent.status.value == "succeeded" and innocent.worker_host and worker.name in innocent.worker_host
    assert "circuit breaker OPEN" not in worker.text()
    assert sorted(p.name for p in outside.iterdir()) == ["output.json", "poster.png", "video.mp4"]  # untouched
    wait_until(lambda: worker_row(farm_env, worker.name).jobs_succeeded >= 2, 30, what="the worker's count")


def test_the_store_maps_uris_from_another_mount(tmp_path: Path) -> None:
    """Nodes may mount the store at different paths: a URI is located by its content-addressed tail."""
    store = OutputStore(tmp_path / "here")
    oid = "ab" + "0" * 62
    assert store.locate(f"file:///mnt/other/root/ab/{oid}/video.mp4") == tmp_path / "here" / "ab" / oid / "video.mp4"
    assert store.locate(f"file:///x/ac/{oid}/video.mp4") is None  # shard must match the id
    assert store.locate("file:///etc/passwd") is None and store.locate("s3://b/k") is None
    assert store.locate(f"file:///x/ab/{oid}/../../../etc/passwd") is None
