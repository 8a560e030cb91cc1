"""Flower tells the truth: a real ``farm flower`` watching a real worker.

A failed render is a FAILURE (not SUCCESS with the result 'failed'), a dropped duplicate message
is REVOKED with no runtime (it never counts as a render), the job id is in the task's args, and
only the worker appears as a worker (producers send no events).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from farm_harness import FARM, FarmEnv, free_port, wait_until

from farm.queue import wire
from farm.queue.app import make_app

FLOWER_AUTH = ("ops", "flower-" + "pw-1a2b3c4d5e6f")


@pytest.fixture
def flower(farm_env: FarmEnv) -> Iterator[str]:
    port = free_port()
    log = farm_env.tmp / "flower.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([FARM, "flower", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env=farm_env.env(FARM_FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH)))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(f"{base}/healthcheck") == 200, 60, what="flower to start")
        yield base
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def tasks_by_job(base: str) -> dict[str, list[dict[str, Any]]]:
    """Flower's tasks, grouped by the job id in their args."""
    found = httpx.get(f"{base}/api/tasks", auth=FLOWER_AUTH, timeout=10).json()
    by_job: dict[str, list[dict[str, Any]]] = {}
    for task in found.values():
        by_job.setdefault(str(task.get("args")).strip("[]()', "), []).append(task)
    return by_job


def test_flower_shows_failures_as_failures_and_duplicates_as_revoked(farm_env: FarmEnv, flower: str) -> None:
    farm_env.start_worker("a")
    [ok] = farm_env.submit(farm_env.new_jobs(1, prefix="a fine shot"))
    [bad] = farm_env.submit(farm_env.new_jobs(1, prefix="a doomed shot", seed0=7, tags=[{"fault": "fail"}]))
    done = {j.id: j for j in farm_env.wait_terminal([ok, bad], 120)}
    assert done[ok].status.value == "succeeded" and done[bad].status.value == "failed"
    settings = farm_env.settings()
    client = wire.client_for(farm_env.broker_url, connect_timeout_s=2, socket_timeout_s=5)
    wire.publish(make_app(settings), client, [(ok, "batch.tiny")])  # a duplicate: dropped, never rendered

    def settled() -> dict[str, list[dict[str, Any]]] | None:
        by_job = tasks_by_job(flower)
        states = sorted(t["state"] for t in by_job.get(ok, []))
        return by_job if states == ["REVOKED", "SUCCESS"] and by_job.get(bad, [{}])[0].get("state") == "FAILURE" \
            else None

    by_job = wait_until(settled, 60, interval=0.5, what="flower to see every task's final state")
    [success] = [t for t in by_job[ok] if t["state"] == "SUCCESS"]
    [revoked] = [t for t in by_job[ok] if t["state"] == "REVOKED"]
    [failure] = by_job[bad]
    assert success["runtime"] and success["runtime"] > 0 and success["result"] == "'succeeded'"
    assert not revoked.get("runtime")  # a dropped duplicate is no render: no runtime in the statistics
    assert "RenderFailed" in str(failure["exception"]) and bad in str(failure["exception"])
    assert ok in str(success["args"])  # the job id is what the task shows
    assert {t["worker"] for t in (success, revoked, failure)} == {"a@farmtest"}
    workers = httpx.get(f"{flower}/api/workers", params={"refresh": "1"}, auth=FLOWER_AUTH, timeout=10).json()
    assert set(workers) == {"a@farmtest"}  # producers (this test process) are not workers
    metrics = httpx.get(f"{flower}/metrics", timeout=10).text
    labelled = {line.split('worker="')[1].split('"')[0] for line in metrics.splitlines()
                if line.startswith("flower_events_total") and 'worker="' in line}
    assert labelled == {"a@farmtest"}, labelled
