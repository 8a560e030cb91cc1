"""The producers against a real farm.

A ``farm worker --device cpu`` process consuming the private Redis, driven only through the CLI
(submit, batch, wait, results, rerender, audit).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from producer_helpers import FARM, RunFarm, write_manifest

from farm.client import Client
from farm.ledger import JobStatus

pytestmark = pytest.mark.slow

WAIT_S = "240"


@pytest.fixture
def worker(farm_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "worker.log").open("wb")
    env = {**farm_env, "FARM_TORCH_THREADS": "1", "FARM_REAP_INTERVAL_S": "2", "FARM_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([FARM, "worker", "--device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


def test_submit_wait_results_rerender_audit_on_a_real_worker(
    worker: subprocess.Popen[bytes], run_farm: RunFarm, client: Client, tmp_path: Path
) -> None:
    submitted = run_farm("submit", "a heron in the reeds at dawn", "--seed", "12", "--steps", "4")
    assert submitted.returncode == 0, submitted.stderr
    [job_id] = submitted.stdout.split()
    waited = run_farm("wait", job_id, "--timeout", WAIT_S, "--poll", "0.2", timeout=300)
    assert waited.returncode == 0, (waited.stderr, (tmp_path / "worker.log").read_text(errors="replace")[-3000:])
    job = client.ledger.get_job(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 1

    # The same job again: answered at once from the cache, by the ledger, without the worker.
    started = time.perf_counter()
    [hit] = client.submit("a heron in the reeds at dawn", seed=12, steps=4)
    hit_job = client.ledger.get_job(hit)
    latency = time.perf_counter() - started
    assert hit_job.status is JobStatus.SUCCEEDED and hit_job.cache_of_job_id == job_id
    print(f"\ncache-hit latency with a live farm, submit -> succeeded: {latency * 1000:.1f} ms")

    items = [{"prompt": "a heron in the reeds at dawn", "seeds": [12, 13, 14]}]
    batch = json.loads(run_farm("batch", str(write_manifest(tmp_path / "b.jsonl", items, defaults={"steps": 4})),
                                "--json").stdout)
    assert batch["enqueued"] == 2  # seed 12 is the cache hit
    waited = run_farm("wait", batch["batch_id"], "--timeout", WAIT_S, "--poll", "0.2", timeout=300)
    assert waited.returncode == 0, waited.stderr
    rows = json.loads(run_farm("results", batch["batch_id"]).stdout)
    assert [r["seed"] for r in rows] == [12, 13, 14] and {r["status"] for r in rows} == {"succeeded"}
    assert rows[0]["cache_of"] == job_id and rows[1]["cache_of"] is None

    rerender = run_farm("rerender", rows[1]["job_id"], "--wait", "--timeout", WAIT_S, "--poll", "0.2", timeout=300)
    assert rerender.returncode == 0 and "MATCH" in rerender.stderr, rerender.stderr
    audit = run_farm("audit", "--json")
    assert audit.returncode == 0 and json.loads(audit.stdout)["clean"] is True
