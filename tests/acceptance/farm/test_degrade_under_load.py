"""Degradation under load, end to end.

In-process (the job runner, the tiny model on CPU, a real Postgres ledger): under load, claimed jobs
that allow it render at their profile's draft settings (the same frames as a ``draft`` job), in a
phase batch of their own; the others render as asked; below the thresholds nothing degrades.

Real processes: one ``farm worker`` with ``FARM_DEGRADE_WAIT_S=0`` renders a job submitted over
HTTP with ``allow_degrade`` degraded while an interactive job waits, and the job phase-batched
with it that does not allow it as asked; ``farm results`` and ``GET /v1/jobs/{id}`` show the
reason and the steps asked and rendered; the same spec submitted again is not answered from the
degraded output.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from farm_harness import FARM, FarmEnv
from pydantic import SecretStr

from farm.ledger import JobRecord, Ledger, NewJob
from farm.spec import parse_spec
from farm.worker.degrade import DegradePolicy
from farm.worker.runner import JobRunner, OutcomeKind

#: The tiny model at its own steps (8; its draft: 4 steps, step caching at 0.2), on one CPU thread.
SIZE = {"width": 32, "height": 32, "num_frames": 9}
DRAFT = {"steps": 4, "cache_threshold": 0.2, "preset": "draft"}
TOKEN = "test-token-" + "0123456789abcdef"


@pytest.fixture(scope="module")
def engine() -> Any:
    from farm.engine.render import Engine

    return Engine("cpu", torch_threads=1)


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    with Ledger(pg_url) as led:
        yield led


def new_job(seed: int, **spec: Any) -> NewJob:
    return NewJob.from_spec(parse_spec({"prompt": f"degrade {seed}", "seed": seed, **SIZE, **spec}))


def runner_for(ledger: Ledger, engine: Any, tmp_path: Path, policy: DegradePolicy) -> JobRunner:
    from farm.store.writer import OutputWriter

    return JobRunner(ledger=ledger, engine=engine, store=OutputWriter(tmp_path / "outputs"), worker_host="deg#1",
                     worker_device="cpu", lease_s=30, heartbeat_s=1, phase_batch=4, degrade=policy)


def claim_all(ledger: Ledger, ids: list[str]) -> list[JobRecord]:
    claimed = [ledger.claim(i, worker_host="deg#1", worker_device="cpu", lease_s=30) for i in ids]
    assert all(c is not None for c in claimed)
    return [c for c in claimed if c is not None]


def batch_size(job: JobRecord) -> int:
    return int((job.timings or {})["stats"]["batch"]["size"])


def test_under_load_allowing_jobs_render_at_draft_settings(ledger: Ledger, engine: Any, tmp_path: Path) -> None:
    """Busy fraction forced low: of three compatible claimed jobs, the two that allow it render degraded.

    Together (a phase batch of two), the third alone as asked; a degraded render gives the frames
    of a ``draft`` job with the same prompt and seed.
    """
    ledger.worker_seen("deg#1", host="h", device="cpu", pid=1, state="idle")  # its row lags: it owns running jobs
    ids = ledger.add_jobs([new_job(1, allow_degrade=True), new_job(2), new_job(3, allow_degrade=True)])
    runner = runner_for(ledger, engine, tmp_path, DegradePolicy(busy_fraction=0.5))
    outcomes = runner.run_claimed(claim_all(ledger, ids))
    assert [o.outcome for o in outcomes] == [OutcomeKind.SUCCEEDED] * 3
    a, b, c = (ledger.get_job(i) for i in ids)
    for job in (a, c):
        assert job.degraded_reason == "1/1 live workers busy (100%) >= 50% (FARM_DEGRADE_BUSY_FRACTION)"
        assert job.effective_params is not None
        assert {k: job.effective_params[k] for k in DRAFT} == DRAFT
        assert (job.params["steps"], job.params["preset"], job.requested_params.get("steps")) == (8, "final", None)
        assert job.job_key == new_job(int(job.seed), allow_degrade=True).job_key  # the key is what was asked
        assert batch_size(job) == 2
        event = next(e for e in ledger.events(job.id) if e.kind == "degraded")
        assert event.detail == {"reason": job.degraded_reason,
                                "requested": {"steps": 8, "cache_threshold": None, "preset": "final"},
                                "effective": DRAFT}
    assert b.degraded_reason is None and b.effective_params == b.params and batch_size(b) == 1
    assert "degraded" not in [e.kind for e in ledger.events(b.id)]

    # The degraded render is the draft render; rendering it again (the job "as a draft") gives the same frames.
    [draft] = ledger.add_jobs([new_job(1, preset="draft")])
    [done] = runner.run_claimed(claim_all(ledger, [draft]))
    assert done.outcome == OutcomeKind.SUCCEEDED
    drafted = ledger.get_job(draft)
    assert drafted.degraded_reason is None  # a draft job is already as cheap: nothing to degrade
    assert drafted.frames_sha256 == a.frames_sha256 and a.frames_sha256 != b.frames_sha256

    # A re-render of a degraded job renders what it rendered (never degraded itself, even under load).
    from farm.client import Client
    from farm.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", output_dir=tmp_path / "outputs", database_url=ledger.url)
    with Client(ledger, settings) as client:
        child_id = client.rerender(a.id).job_id
    child = ledger.get_job(child_id)
    assert not child.allow_degrade and (child.params["steps"], child.parent_job_id) == (4, a.id)
    [again] = runner.run([child_id])
    assert again.outcome == OutcomeKind.SUCCEEDED
    child = ledger.get_job(child_id)
    assert child.degraded_reason is None and child.frames_sha256 == a.frames_sha256


@pytest.mark.parametrize("policy", [DegradePolicy(), DegradePolicy(wait_s=3600), DegradePolicy(busy_fraction=1.0),
                                    DegradePolicy(wait_s=0)], ids=["unset", "wait-high", "busy-high", "none-waits"])
def test_below_the_thresholds_nothing_degrades(ledger: Ledger, engine: Any, tmp_path: Path,
                                               policy: DegradePolicy) -> None:
    """Unset, or not passed.

    An hour's wait while one job waited a moment, every worker busy with two of them live and one
    idle, any wait with no interactive job waiting: every job renders as asked.
    """
    ledger.worker_seen("deg#1", host="h", device="cpu", pid=1, state="idle")
    ledger.worker_seen("idle#2", host="h", device="cpu", pid=2, state="idle")
    ids = ledger.add_jobs([new_job(11, allow_degrade=True, priority="interactive")])
    if policy.wait_s != 0:
        ledger.add_jobs([new_job(12, priority="interactive", height=48)])  # waits (another compat key)
    [outcome] = runner_for(ledger, engine, tmp_path, policy).run_claimed(claim_all(ledger, ids))
    assert outcome.outcome == OutcomeKind.SUCCEEDED
    job = ledger.get_job(ids[0])
    assert job.degraded_reason is None and job.effective_params == job.params
    assert "degraded" not in [e.kind for e in ledger.events(job.id)]


# -- real processes ------------------------------------------------------------------------------


def farm_cli(env: FarmEnv, *args: str) -> str:
    done = subprocess.run([FARM, *args], env=env.env(), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def submit_cli(env: FarmEnv, prompt: str, seed: int, *, height: int = 32, allow_degrade: bool = False) -> str:
    """``farm submit`` of one interactive tiny job; its id."""
    out = farm_cli(env, "submit", prompt, "--seed", str(seed), "--priority", "interactive", "--width", "32",
                   "--height", str(height), "--frames", "9", "--json", *(["--allow-degrade"] if allow_degrade else []))
    [job_id] = json.loads(out)["job_ids"]
    return str(job_id)


def test_a_worker_degrades_while_an_interactive_job_waits(farm_env: FarmEnv) -> None:
    """``FARM_DEGRADE_WAIT_S=0``, one worker, phase batches of 4; everything submitted before it starts.

    A (HTTP, allow_degrade) and B (CLI) are compatible and claimed together while F (another size)
    waits: A renders degraded, B as asked. F and G (allow_degrade) are claimed together with nobody
    waiting: both as asked. The results and the API show it; A's spec again renders as asked (the
    degraded output answers no one).
    """
    from fastapi.testclient import TestClient

    from farm.api.app import create_app

    farm_env.overrides.update(FARM_PHASE_BATCH="4", FARM_DEGRADE_WAIT_S="0")
    settings = farm_env.settings().model_copy(update={"api_token": SecretStr(TOKEN)})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings), headers=auth) as http:
        answer = http.post("/v1/jobs", json={"prompt": "degrade a", "seed": 1, "allow_degrade": True, **SIZE})
        assert answer.status_code == 201, answer.text
        [a] = answer.json()["job_ids"]
        b = submit_cli(farm_env, "degrade b", 2)
        f = submit_cli(farm_env, "degrade f", 3, height=48)
        g = submit_cli(farm_env, "degrade g", 4, height=48, allow_degrade=True)
        assert farm_env.ledger.get_job(a).allow_degrade and farm_env.ledger.get_job(g).allow_degrade
        assert not farm_env.ledger.get_job(b).allow_degrade

        farm_env.start_worker("deg")
        jobs = {j.id: j for j in farm_env.wait_terminal([a, b, f, g], 180)}
        assert all(j.status.value == "succeeded" for j in jobs.values()), [
            (j.status.value, j.error_message) for j in jobs.values()]
        ja, jb, jf, jg = jobs[a], jobs[b], jobs[f], jobs[g]
        assert ja.degraded_reason is not None and ja.degraded_reason.startswith("interactive queue oldest wait ")
        assert ja.degraded_reason.endswith(" >= 0 s (FARM_DEGRADE_WAIT_S)")
        assert ja.effective_params is not None and {k: ja.effective_params[k] for k in DRAFT} == DRAFT
        assert "degraded" in [e.kind for e in farm_env.ledger.events(a)]
        for job in (jb, jf, jg):
            assert job.degraded_reason is None and job.effective_params == job.params, job.id
        assert batch_size(ja) == 1 and batch_size(jb) == 1 and batch_size(jf) == 2 and batch_size(jg) == 2

        [row] = json.loads(farm_cli(farm_env, "results", a, "--format", "json"))
        assert (row["allow_degrade"], row["degraded_reason"], row["requested_steps"], row["effective_steps"]) == (
            True, ja.degraded_reason, 8, 4)
        [cells] = list(csv.DictReader(io.StringIO(farm_cli(farm_env, "results", b, "--format", "csv"))))
        assert (cells["allow_degrade"], cells["degraded_reason"], cells["requested_steps"], cells["effective_steps"]) \
            == ("False", "", "8", "8")
        shown = farm_cli(farm_env, "jobs", "show", a)
        assert f"degraded:         {ja.degraded_reason} (steps 8 asked, 4 rendered)" in shown and " degraded " in shown
        view = http.get(f"/v1/jobs/{a}").json()
        assert (view["allow_degrade"], view["degraded_reason"], view["requested_steps"], view["effective_steps"]) == (
            True, ja.degraded_reason, 8, 4)
        assert http.get(f"/v1/jobs/{b}").json()["degraded_reason"] is None

        # The same spec as A again, nobody waiting: not answered from A's degraded output; rendered as asked.
        again = http.post("/v1/jobs", json={"prompt": "degrade a", "seed": 1, "allow_degrade": True, **SIZE})
        assert again.status_code == 201, again.text
        [a2] = again.json()["job_ids"]
        [j2] = farm_env.wait_terminal([a2], 120)
        assert j2.status.value == "succeeded" and j2.cache_of_job_id is None and j2.degraded_reason is None
        assert j2.job_key == ja.job_key and j2.frames_sha256 != ja.frames_sha256
        assert j2.effective_params is not None and j2.effective_params["steps"] == 8
