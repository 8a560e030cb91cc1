"""Following submitted work.

Status (counts, progress, ETA), wait (exit codes 0 / 1 / 124), results (JSON and CSV
contents), cancel (a job or a whole batch, queued and running).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from producer_helpers import Broker, RunFarm, Work, write_manifest

from farm.client import Client, StatusReport
from farm.client.export import read_csv
from farm.client.reports import RESULT_FIELDS, eta_seconds, group_status
from farm.ledger import JobStatus, Ledger
from farm.ledger.stats import Pace


def small_batch(client: Client, tmp_path: Path, n: int = 3, name: str = "follow",
                subject: str = "a lantern on a pier") -> str:
    items = [{"prompt": f"{subject}, take {i}", "seed": 40 + i} for i in range(n)]
    return client.submit_batch(write_manifest(tmp_path / f"{name}.jsonl", items, name=name)).batch_id


def test_job_eta_is_its_own_pace_so_far() -> None:
    assert eta_seconds(4, 0, 10) is None
    assert eta_seconds(4, 2.5, 25) == pytest.approx(15.0)
    assert eta_seconds(4, 4, 25) == 0.0


def _pace(done: int, running: float, first: datetime | None, workers: int, total: int = 40) -> Pace:
    counts = {"succeeded": done, "running": int(running > 0), "queued": total - done - int(running > 0)}
    return Pace(counts, running, done, first, workers)


def test_group_eta_comes_from_the_rendering_pace_not_the_queue_wait() -> None:
    """The reported case.

    A batch waited behind other work before any worker touched it; the ETA then must not count
    that wait as pace. 40 jobs, 10 minutes queued, then 2 workers finish one job every 6 s each:
    after 10 jobs (30 s of rendering) 30 are left, 90 s at that pace.
    """
    created = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    first = created + timedelta(minutes=10)
    now = first + timedelta(seconds=30)
    report = group_status("b", "batch", _pace(10, 0.0, first, workers=2), now)
    assert report.total == 40 and report.done == 10 and report.progress == pytest.approx(0.25)
    assert report.eta_s == pytest.approx(90.0)
    # the old estimate (pace since the batch was created) said 1,890 s for the same state
    assert eta_seconds(40, 10, (now - created).total_seconds()) == pytest.approx(1890.0)
    # no ETA before there is a pace: nothing started, fewer than 2 rendered, or fewer than one per worker
    assert group_status("b", "batch", _pace(0, 0.0, None, 0), now).eta_s is None
    assert group_status("b", "batch", _pace(1, 0.5, first, 1), now).eta_s is None
    assert group_status("b", "batch", _pace(3, 0.0, first, 4), now).eta_s is None
    assert group_status("b", "batch", _pace(4, 0.0, first, 4), now).eta_s is not None
    # running jobs' progress counts as work done; a finished group has ETA 0
    half = group_status("b", "batch", _pace(10, 1.0, first, 2), now)
    assert half.progress == pytest.approx(11 / 40) and half.eta_s == pytest.approx(29 * 30 / 11)
    assert group_status("b", "batch", _pace(40, 0.0, first, 2), now).eta_s == 0.0


def test_status_of_a_batch_and_of_a_job(client: Client, ledger: Ledger, tmp_path: Path, work: Work) -> None:
    batch_id = small_batch(client, tmp_path)
    before = client.status(batch_id)
    assert (before.kind, before.total, before.counts["queued"], before.progress) == ("batch", 3, 3, 0.0)
    assert before.eta_s is None and not before.finished
    job_id = ledger.batch_jobs(batch_id)[0].id
    ledger.claim(job_id, worker_host="w", worker_device="cpu", lease_s=60)
    ledger.heartbeat(job_id, worker_host="w", lease_s=60, progress=0.5)
    running = client.status(job_id)
    assert running.kind == "job" and running.counts["running"] == 1 and running.progress == 0.5
    assert running.eta_s is not None and running.eta_s >= 0
    mid = client.status(batch_id)
    assert mid.counts["running"] == 1 and mid.progress == pytest.approx(0.5 / 3)
    ledger.release(job_id, worker_host="w", reason="test")
    work()
    after = client.status(batch_id)
    assert after.counts["succeeded"] == 3 and after.progress == 1.0 and after.eta_s == 0.0
    assert after.finished and after.all_succeeded


def test_wait_follows_progress_until_done(client: Client, tmp_path: Path, work: Work) -> None:
    batch_id = small_batch(client, tmp_path)
    seen: list[StatusReport] = []
    renderer = threading.Timer(0.5, work)
    renderer.start()
    try:
        report = client.wait(batch_id, timeout_s=120, poll_s=0.1, on_progress=seen.append)
    finally:
        renderer.join()
    assert report.finished and report.all_succeeded and not report.timed_out
    assert seen[0].done == 0 and seen[-1].done == 3 and len(seen) >= 2
    assert [r.done for r in seen] == sorted(r.done for r in seen)


def test_wait_times_out(client: Client) -> None:
    [job_id] = client.submit("a slow job", seed=1)
    started = time.monotonic()
    report = client.wait(job_id, timeout_s=0.3, poll_s=0.05)
    assert report.timed_out and not report.finished and report.counts["queued"] == 1
    assert 0.3 <= time.monotonic() - started < 5


def test_cli_wait_exit_codes(client: Client, ledger: Ledger, tmp_path: Path, work: Work, run_farm: RunFarm) -> None:
    good = small_batch(client, tmp_path, name="good", subject="a good take")
    work()
    ok = run_farm("wait", good, "--poll", "0.1")
    assert ok.returncode == 0, ok.stderr
    assert "succeeded 3" in ok.stderr and "done" in ok.stderr

    bad = small_batch(client, tmp_path, n=2, name="bad", subject="a cancelled take")
    _first, second = ledger.batch_jobs(bad)
    client.cancel(second.id)
    work()
    failed = run_farm("wait", bad, "--poll", "0.1", "--json")
    payload = json.loads(failed.stdout)
    assert failed.returncode == 1 and payload["counts"]["cancelled"] == 1 and payload["counts"]["succeeded"] == 1

    [pending] = client.submit("nobody renders this", seed=2)
    timed = run_farm("wait", pending, "--timeout", "0.5", "--poll", "0.1")
    assert timed.returncode == 124 and "timed out" in timed.stderr and "queued 1" in timed.stderr
    status = run_farm("status", pending, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["counts"]["queued"] == 1


def sha256_of(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_results_json_and_csv(
    client: Client, ledger: Ledger, tmp_path: Path, work: Work, run_farm: RunFarm, broker: Broker
) -> None:
    [earlier] = client.submit("a lantern on a pier, take 1", seed=41)  # item 2 below: a cache hit
    work()
    batch_id = small_batch(client, tmp_path)
    work()
    proc = run_farm("results", batch_id, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    jobs = ledger.batch_jobs(batch_id)
    assert [r["job_id"] for r in rows] == [j.id for j in jobs] and [r["batch_index"] for r in rows] == [0, 1, 2]
    for row, job in zip(rows, jobs, strict=True):
        assert set(row) == set(RESULT_FIELDS)
        assert (row["prompt"], row["seed"], row["seed_strategy"], row["status"]) == (
            job.prompt, job.seed, "explicit", "succeeded")
        assert row["params"] == job.params and row["frames_sha256"] == job.frames_sha256
        assert row["file_sha256"] == sha256_of(row["output"])
        assert row["output_uri"] == f"file://{row['output']}"
    assert rows[1]["cache_of"] == earlier and rows[1]["timings"] == {"cache_hit": True}
    assert rows[0]["cache_of"] is None and rows[0]["timings"]["render_s"] > 0

    out = tmp_path / "results.csv"
    proc = run_farm("results", batch_id, "--format", "csv", "--output", str(out))
    assert proc.returncode == 0 and "3 row(s)" in proc.stderr
    table = read_csv(out.read_text(encoding="utf-8"))  # (the spreadsheet export: farm.client.export)
    assert [r["job_id"] for r in table] == [r["job_id"] for r in rows]
    for line, row in zip(table, rows, strict=True):
        assert "params" not in line and int(line["seed"]) == row["seed"]
        assert [line[k] for k in ("width", "steps", "sampler")] == [str(row["params"][k]) for k in
                                                                   ("width", "steps", "sampler")]
        assert line["video"] == row["output"] and line["cache_of"] == (row["cache_of"] or "")
    # A job id gives its one row.
    assert [r["job_id"] for r in client.results(earlier)] == [earlier]


def test_cancel_a_batch_queued_and_running(client: Client, ledger: Ledger, tmp_path: Path, run_farm: RunFarm) -> None:
    batch_id = small_batch(client, tmp_path, n=4)
    jobs = ledger.batch_jobs(batch_id)
    ledger.claim(jobs[2].id, worker_host="w", worker_device="cpu", lease_s=60)
    report = client.cancel(batch_id)
    assert report.kind == "batch" and report.cancelled[0] == jobs[2].id  # running first
    assert sorted(report.cancelled) == sorted(j.id for j in jobs) and report.unchanged == {}
    assert {ledger.get_job(j.id).status for j in jobs} == {JobStatus.CANCELLED}
    # The worker's next heartbeat is refused: it stops rendering.
    assert not ledger.heartbeat(jobs[2].id, worker_host="w", lease_s=60)
    again = run_farm("cancel", batch_id, "--json")
    payload = json.loads(again.stdout)
    assert again.returncode == 0 and payload["cancelled"] == []
    assert payload["unchanged"] == {j.id: "cancelled" for j in jobs}


def test_cli_cancel_one_job(client: Client, ledger: Ledger, run_farm: RunFarm) -> None:
    [job_id] = client.submit("cancel me", seed=3)
    proc = run_farm("cancel", job_id)
    assert proc.returncode == 0 and proc.stdout.split() == [job_id]
    assert ledger.get_job(job_id).status is JobStatus.CANCELLED
