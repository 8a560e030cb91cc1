"""Speed presets end to end: draft renders recorded with their cache settings, and ``farm promote``.

A content team previews seeds as cheap drafts and finalises the good ones: the draft's job row
holds the preset, its steps and cache threshold (canonical spec) and the forwards the cache
skipped (stats); ``promote`` renders the same (prompt, seed, size) at ``final`` as a child job.
Real Postgres and Redis; the jobs are rendered by the one-shot stand-in worker (``work``).
"""

from __future__ import annotations

import json

import pytest
from producer_helpers import Broker, RunFarm, Work

from farm.client import Client
from farm.errors import InvalidInput
from farm.ledger import JobStatus, Ledger
from farm.profiles import PROFILES

TINY = PROFILES["tiny"]
PROMPT = "a glass bottle of lemonade on a sunny table"


def draft(client: Client, work: Work, seed: int) -> str:
    [job_id] = client.submit(PROMPT, seed=seed, model="tiny", preset="draft", width=48)
    assert [o.outcome for o in work()] == ["succeeded"]
    return job_id


def test_a_draft_is_recorded_with_its_preset_cache_settings_and_skipped_forwards(
    client: Client, ledger: Ledger, work: Work
) -> None:
    job = ledger.get_job(draft(client, work, 3))
    assert job.params["preset"] == "draft" and job.params["steps"] == TINY.draft_steps
    assert job.params["cache_threshold"] == TINY.draft_cache_threshold
    cache = (job.timings or {})["stats"]["cache"]
    assert cache["method"] == "first_block_cache" and sum(cache["skipped"].values()) > 0


def test_promote_renders_the_draft_at_final_as_a_child(client: Client, ledger: Ledger, work: Work,
                                                       broker: Broker) -> None:
    parent = ledger.get_job(draft(client, work, 4))
    sub = client.promote(parent.id)
    [child_id] = sub.job_ids
    child = ledger.get_job(child_id)
    assert child.parent_job_id == parent.id and child.status is JobStatus.QUEUED
    assert child.params["preset"] == "final" and child.params["cache_threshold"] is None
    assert child.params["steps"] == TINY.steps
    same = ("prompt", "negative_prompt", "seed", "model", "width", "height", "num_frames", "fps",
            "guidance_scale", "guidance_scale_2", "sampler", "flow_shift", "boundary_ratio")
    assert {k: child.params[k] for k in same} == {k: parent.params[k] for k in same}
    assert [o.outcome for o in work()] == ["succeeded"]
    final = ledger.get_job(child_id)
    assert final.frames_sha256 != parent.frames_sha256 and "cache" not in final.timings["stats"]
    # a second promotion of the same draft is answered by the final render already made
    again = client.promote(parent.id)
    assert again.first_status == "succeeded" and again.cache_of == child_id and again.enqueued == 0
    assert broker.lengths() == {"farm.interactive": 0, "farm.batch": 0}


def test_only_succeeded_drafts_can_be_promoted(client: Client, ledger: Ledger, work: Work) -> None:
    [final_id] = client.submit(PROMPT, seed=5, model="tiny")
    work()
    with pytest.raises(InvalidInput) as info:
        client.promote(final_id)
    assert [(p.field, p.rule) for p in info.value.problems] == [("job_id", "not_a_draft")]
    [queued] = client.submit(PROMPT, seed=6, model="tiny", preset="draft")
    with pytest.raises(InvalidInput) as info:
        client.promote(queued)
    assert info.value.problems[0].rule == "succeeded"


def test_farm_promote_several_drafts_as_one_batch(client: Client, ledger: Ledger, work: Work,
                                                  run_farm: RunFarm) -> None:
    drafts = [draft(client, work, seed) for seed in (7, 8)]
    proc = run_farm("promote", *drafts, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["parent_job_ids"] == drafts and out["batch_id"] and len(out["job_ids"]) == 2
    children = [ledger.get_job(j) for j in out["job_ids"]]
    assert [c.parent_job_id for c in children] == drafts
    assert [c.seed for c in children] == [7, 8] and {c.params["preset"] for c in children} == {"final"}
    assert [o.outcome for o in work()] == ["succeeded", "succeeded"]


def test_the_cli_takes_the_preset_options(client: Client, ledger: Ledger, run_farm: RunFarm) -> None:
    proc = run_farm("submit", PROMPT, "--seed", "9", "--model", "tiny", "--preset", "custom",
                    "--cache-threshold", "0.3", "--json")
    assert proc.returncode == 0, proc.stderr
    job = ledger.get_job(json.loads(proc.stdout)["job_ids"][0])
    assert job.params["preset"] == "custom" and job.params["cache_threshold"] == 0.3
    bad = run_farm("submit", PROMPT, "--seed", "9", "--model", "tiny", "--preset", "custom")
    assert bad.returncode == 2 and "cache_threshold" in bad.stderr and "required_by_preset" in bad.stderr
