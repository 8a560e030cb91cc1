"""Bad input at every producer door (Python API and CLI).

A clear error naming the field and the rule, and NOTHING written to the ledger and NOTHING sent
to the broker (checked in the real Postgres and with ``llen`` on the private Redis).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from producer_helpers import Broker, RunFarm, count_rows, write_manifest

from farm.client import Client
from farm.errors import InvalidInput, JobNotFound, ManifestError, SpecError


def assert_nothing_written(settings_url: str, broker: Broker) -> None:
    assert count_rows(settings_url, "jobs") == 0
    assert count_rows(settings_url, "batches") == 0
    assert count_rows(settings_url, "events") == 0
    assert broker.lengths() == {"farm.interactive": 0, "farm.batch": 0}


# (kwargs of Client.submit, field named, rule named)
API_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"prompt": "a fox", "seed": 1, "width": 33}, "width", "multiple_of_16"),
    ({"prompt": "   ", "seed": 1}, "prompt", "not_blank"),
    ({"prompt": "a fox", "seed": -1}, "seed", "seed_range"),
    ({"prompt": "a fox", "seed": 2**32}, "seed", "seed_range"),
    ({"prompt": "a fox", "seed": "7"}, "seed", "type"),
    ({"prompt": "a fox", "seed": 1, "num_frames": 8}, "num_frames", "frames_4k_plus_1"),
    ({"prompt": "a fox", "seed": 1, "model": "nope"}, "model", "known_model"),
    ({"prompt": "a fox", "seed": 1, "priority": "urgent"}, "priority", "one_of"),
    ({"prompt": "a fox", "seed": 1, "colour": "red"}, "colour", "unknown_field"),
    ({"prompt": "a fox", "seed": 1, "seed_strategy": "pool"}, "seed_strategy", "set_by_client"),
    ({"prompt": "a fox", "seed": 1, "seed_from_prompt": True}, "seed_from_prompt", "one_seed_source"),
    ({"prompt": "a fox", "seed": 1, "sweep": (5, 1)}, "sweep", "one_seed_source"),
    ({"prompt": "a fox", "salt": "v1"}, "salt", "needs_seed_from_prompt"),
    ({"prompt": "a fox", "sweep": (5, -1)}, "sweep.radius", "sweep_radius"),
    ({"prompt": "a fox", "sweep": (-5, 1)}, "sweep.base", "seed_range"),
    ({"prompt": "a fox", "sweep": 5}, "sweep", "base_radius"),
    ({"prompt": "a fox", "seed": 1, "idempotency_key": ""}, "idempotency_key", "idempotency_key"),
    ({"prompt": "a fox", "seed": 1, "idempotency_key": "a\x00b"}, "idempotency_key", "idempotency_key"),
    ({"prompt": "a fox", "seed": 1, "no_cache": "yes"}, "no_cache", "type"),
    ({"prompt": "a fox", "seed": 1, "guidance_scale": float("nan")}, "guidance_scale", "finite"),
]


@pytest.mark.parametrize(("kwargs", "field", "rule"), API_CASES, ids=[f"{c[1]}-{c[2]}" for c in API_CASES])
def test_api_submit_rejects_bad_input(
    client: Client, broker: Broker, pg_url: str, kwargs: dict[str, Any], field: str, rule: str
) -> None:
    args = dict(kwargs)
    prompt = args.pop("prompt")
    with pytest.raises(InvalidInput) as info:
        client.submit(prompt, **args)
    assert (field, rule) in [(p.field, p.rule) for p in info.value.problems], info.value.problems
    assert field in str(info.value)
    assert_nothing_written(pg_url, broker)


def test_api_reports_every_problem_at_once(client: Client, broker: Broker, pg_url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        client.submit("a fox", seed=1, seed_from_prompt=True, width=33, steps=0)
    assert {"seed_from_prompt", "width", "steps"} <= set(info.value.fields)
    assert_nothing_written(pg_url, broker)


def big_manifest(tmp_path: Path, bad: dict[str, Any], *, at: int = 36, n: int = 60) -> Path:
    items: list[dict[str, Any]] = [{"prompt": f"shot {i} of a paper boat", "seed": i} for i in range(n)]
    items[at].update(bad)
    return write_manifest(tmp_path / "day.jsonl", items, name="bad-one", defaults={"model": "tiny"})


def test_api_manifest_with_one_bad_item_writes_and_sends_nothing(
    client: Client, broker: Broker, pg_url: str, tmp_path: Path
) -> None:
    path = big_manifest(tmp_path, {"width": 33})
    with pytest.raises(ManifestError) as info:
        client.submit_batch(path)
    [problem] = info.value.problems
    assert problem.field == "width" and problem.rule == "multiple_of_16"
    assert "day.jsonl" in problem.location and "item 37" in problem.location
    assert_nothing_written(pg_url, broker)


def test_api_manifest_problems_are_all_listed(client: Client, broker: Broker, pg_url: str, tmp_path: Path) -> None:
    items: list[dict[str, Any]] = [{"prompt": f"shot {i}", "seed": i} for i in range(20)]
    items[3]["steps"] = 0
    items[11]["seed"] = -4
    items[15]["colour"] = "red"
    path = write_manifest(tmp_path / "many.jsonl", items)
    with pytest.raises(ManifestError) as info:
        client.submit_batch(path)
    where = {(p.field, p.location.split(": ")[1].split(" (")[0]) for p in info.value.problems}
    assert {("steps", "item 4"), ("seed", "item 12"), ("colour", "item 16")} <= where
    assert_nothing_written(pg_url, broker)


@pytest.mark.parametrize(
    ("content", "suffix", "field"),
    [
        ("", ".yaml", "manifest"),
        ("items: [\n", ".yaml", "manifest"),
        ("a,b\n", ".txt", "manifest"),
    ],
    ids=["empty", "yaml-syntax", "extension"],
)
def test_api_unreadable_manifest(
    client: Client, broker: Broker, pg_url: str, tmp_path: Path, content: str, suffix: str, field: str
) -> None:
    path = tmp_path / f"m{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        client.submit_batch(path)
    assert info.value.problems[0].field == field
    assert_nothing_written(pg_url, broker)


def test_api_manifest_object_of_wrong_type(client: Client, broker: Broker, pg_url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        client.submit_batch(42)  # type: ignore[arg-type]
    assert info.value.fields == ["manifest"]
    assert_nothing_written(pg_url, broker)


@pytest.mark.parametrize("method", ["status", "wait", "results", "cancel", "star", "rerender", "audit"])
def test_api_ids_are_checked(client: Client, method: str) -> None:
    with pytest.raises(InvalidInput) as info:
        getattr(client, method)("not-a-uuid")
    assert info.value.problems[0].rule == "uuid"
    with pytest.raises(JobNotFound if method != "audit" else LookupError):
        getattr(client, method)("0b5c8a1e-8a3c-4e83-9d5a-3b0c4b7f2a10")


def test_api_wait_checks_its_numbers(client: Client) -> None:
    job_id = "0b5c8a1e-8a3c-4e83-9d5a-3b0c4b7f2a10"
    with pytest.raises(InvalidInput, match="timeout_s"):
        client.wait(job_id, timeout_s=-1)
    with pytest.raises(InvalidInput, match="poll_s"):
        client.wait(job_id, poll_s=0)


# -- the CLI doors ---------------------------------------------------------------------------------

CLI_CASES: list[tuple[list[str], str]] = [
    (["submit", "a fox", "--seed", "1", "--width", "33"], "width"),
    (["submit", "a fox", "--seed", "1", "--frames", "8"], "num_frames"),
    (["submit", "a fox", "--seed", "1", "--seed-from-prompt"], "seed_from_prompt"),
    (["submit", "a fox", "--sweep", "10"], "sweep"),
    (["submit", "a fox", "--sweep", "10:-2"], "sweep.radius"),
    (["submit", "a fox", "--seed", "-3"], "seed"),
    (["submit", "a fox", "--salt", "x"], "salt"),
    (["submit", "a fox", "--seed", "1", "--tag", "novalue"], "tags"),
    (["submit", "", "--seed", "1"], "prompt"),
    (["status", "not-a-uuid"], "id"),
    (["wait", "not-a-uuid"], "id"),
    (["results", "not-a-uuid"], "batch_id"),
    (["cancel", "x"], "id"),
    (["star", "x"], "job_id"),
    (["sweep", "x", "--radius", "2"], "job_id"),
    (["rerender", "x"], "job_id"),
    (["audit", "x"], "batch_id"),
]


@pytest.mark.parametrize(("args", "field"), CLI_CASES, ids=[" ".join(c[0][:2]) + f"-{c[1]}" for c in CLI_CASES])
def test_cli_rejects_bad_input(run_farm: RunFarm, broker: Broker, pg_url: str, args: list[str], field: str) -> None:
    if args[0] != "results":  # results prints JSON or CSV rows; it has no --json
        proc = run_farm(*args, "--json")
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        payload = json.loads(proc.stdout)
        assert field in [p["field"] for p in payload["problems"]], payload
        assert_nothing_written(pg_url, broker)
    human = run_farm(*args)
    assert human.returncode == 2
    assert f"{field}:" in human.stderr and "[" in human.stderr  # "field: message [rule]"
    assert_nothing_written(pg_url, broker)


def test_cli_batch_with_one_bad_item_writes_and_sends_nothing(
    run_farm: RunFarm, broker: Broker, pg_url: str, tmp_path: Path
) -> None:
    path = big_manifest(tmp_path, {"seed": {"sweep": {"base": 3, "radius": -1}}}, at=44)
    proc = run_farm("batch", str(path))
    assert proc.returncode == 2
    assert "day.jsonl: item 45" in proc.stderr and "seed.sweep.radius" in proc.stderr
    assert_nothing_written(pg_url, broker)


def test_cli_unknown_ids_fail_clearly(run_farm: RunFarm) -> None:
    unknown = "0b5c8a1e-8a3c-4e83-9d5a-3b0c4b7f2a10"
    proc = run_farm("status", unknown)
    assert proc.returncode == 1 and unknown in proc.stderr


def test_spec_errors_are_spec_errors(client: Client) -> None:
    with pytest.raises(SpecError):
        client.submit("a fox", seed=1, steps=1000)


def test_two_seeds_differing_only_above_bit_32_cannot_both_be_submitted(
    client: Client, broker: Broker, pg_url: str
) -> None:
    [job_id] = client.submit("a fox in the snow", seed=7, model="tiny")
    before = broker.lengths()
    for twin in (7 + 2**32, 7 + 2**62):
        with pytest.raises(InvalidInput) as info:
            client.submit("a fox in the snow", seed=twin, model="tiny")
        assert [(p.field, p.rule) for p in info.value.problems] == [("seed", "seed_range")]
    assert count_rows(pg_url, "jobs") == 1 and broker.lengths() == before
    assert client.get_job(job_id).seed == 7
