"""A worker's Prometheus endpoint (FARM_WORKER_METRICS_PORT).

Jobs by outcome, render time, expert swaps and transfer bytes from the placement layer. Real
worker process, private Redis, Postgres.
"""

from __future__ import annotations

import re
import urllib.request

from farm_harness import FarmEnv, free_port, wait_until


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics:\n{text}")


def test_worker_serves_job_swap_and_transfer_metrics(farm_env: FarmEnv) -> None:
    port = free_port()
    farm_env.overrides.update(FARM_OFFLOAD="expert", FARM_PHASE_BATCH="1", FARM_WORKER_METRICS_PORT=str(port))
    farm_env.start_worker("m")
    before = wait_until(lambda: scrape(port), 30, what="worker metrics endpoint")
    assert re.search(r"farm_worker_circuit_open\{.*\} 0\.0", before)
    ids = farm_env.submit(farm_env.new_jobs(2, prefix="metrics"))
    records = farm_env.wait_terminal(ids, 120)
    assert all(r.status.value == "succeeded" for r in records)

    def counted() -> str | None:
        text = scrape(port)
        done = 'outcome="succeeded"' in text and value(text, "farm_worker_jobs_total", outcome="succeeded") == 2
        return text if done else None

    text = wait_until(counted, 30, what="two succeeded jobs counted")
    # Two solo two-expert jobs under the "expert" policy: 2 swaps each.
    assert value(text, "farm_worker_expert_swaps_total") == 4.0
    expected_bytes = sum(r.timings["stats"]["batch"]["transfers"]["bytes"] for r in records)
    assert value(text, "farm_worker_transfer_bytes_total") == float(expected_bytes) > 0
    assert value(text, "farm_worker_render_seconds_count") == 2.0
    assert value(text, "farm_worker_consecutive_failures") == 0.0
