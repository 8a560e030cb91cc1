"""Checking what the farm produced and building on it.

Re-render (match, and a mismatch listing the environment differences), the storage audit (ok,
missing, corrupt), star and sweep.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from producer_helpers import FARM, Broker, RunFarm, Work, execute_sql, write_manifest

from farm.client import Client
from farm.errors import InvalidInput
from farm.ledger import JobStatus, Ledger

PROMPT = "a paper boat drifting down a rain gutter"


def rendered(client: Client, work: Work, seed: int, **spec: object) -> str:
    [job_id] = client.submit(PROMPT, seed=seed, **spec)  # type: ignore[arg-type]
    outcomes = work()
    assert [o.outcome for o in outcomes] == ["succeeded"], outcomes
    return job_id


# -- re-render ---------------------------------------------------------------------------------


def test_rerender_matches(client: Client, ledger: Ledger, broker: Broker, work: Work, run_farm: RunFarm) -> None:
    parent = ledger.get_job(rendered(client, work, 21, priority="batch"))
    report = client.rerender(parent.id)
    child = ledger.get_job(report.job_id)
    assert report.status == "queued" and report.match is None and not report.finished
    assert child.parent_job_id == parent.id and child.no_cache and child.cache_of_job_id is None
    assert child.params == parent.params and child.job_key == parent.job_key
    assert broker.job_ids("farm.batch") == [child.id]  # rendered, not answered from the cache
    work()
    done = client.rerender_report(child.id)
    assert done.match is True and done.frames_sha256 == parent.frames_sha256 and done.differences == []
    proc = run_farm("rerender", child.id, "--report")
    assert proc.returncode == 0 and "MATCH" in proc.stderr


def test_rerender_waits_for_the_result(client: Client, ledger: Ledger, work: Work) -> None:
    parent_id = rendered(client, work, 22)
    renderer = threading.Timer(0.5, work)
    renderer.start()
    try:
        report = client.rerender(parent_id, wait=True, timeout_s=120, poll_s=0.1)
    finally:
        renderer.join()
    assert report.finished and report.match is True and not report.timed_out
    assert ledger.get_job(report.job_id).status is JobStatus.SUCCEEDED


def test_rerender_in_another_environment_reports_the_differences(
    client: Client, ledger: Ledger, work: Work, farm_env: dict[str, str], pg_url: str
) -> None:
    parent_id = rendered(client, work, 23)
    # Test-only: pretend the parent was rendered elsewhere, with other frames.
    execute_sql(
        pg_url,
        "UPDATE jobs SET frames_sha256 = :frames, weights_fingerprint = :weights, env_fingerprint = "
        "jsonb_set(jsonb_set(jsonb_set(env_fingerprint, '{torch}', '\"2.4.0+cu121\"'), '{cuda}', '\"12.1\"'), "
        "'{torch_num_threads}', '4') WHERE id = :id",
        frames="0" * 64, weights="f" * 64, id=parent_id,
    )
    proc = subprocess.Popen([FARM, "rerender", parent_id, "--wait", "--timeout", "120", "--poll", "0.1"],
                            env=farm_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not work():  # render the re-render as soon as its message arrives
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "MISMATCH" in err and "0" * 64 in err
    assert "env.torch: '2.4.0+cu121' -> " in err and "weights_fingerprint: 'fff" in err
    # the explanation: the frame-affecting differences, the most telling first
    [why] = [line for line in err.splitlines() if line.startswith("why: ")]
    assert why.index("weights: ") < why.index("torch CPU threads: 4 -> 1") < why.index("CUDA build: '12.1' -> None")
    assert "FARM_TORCH_THREADS" in why and "torch build: '2.4.0+cu121' -> " in why
    report = client.rerender_report(out.split()[0])
    assert report.match is False
    fields = {d.field: (d.parent, d.child) for d in report.differences}
    assert fields["env.torch"][0] == "2.4.0+cu121" and fields["env.cuda"] == ("12.1", None)
    assert fields["weights_fingerprint"][0] == "f" * 64
    assert not any(f.startswith("effective_params") for f in fields)  # same parameters rendered


def test_a_job_recorded_under_the_63_bit_seed_rule_rerenders_its_frames(
    client: Client, ledger: Ledger, work: Work, pg_url: str
) -> None:
    from farm.spec import RENDER_FIELDS_V1, job_key_of

    parent_id = rendered(client, work, 7)
    # Test-only: turn the row into one farm.spec/1 recorded for seed 7 + 2^40 (the generator used 7):
    # that version's canonical form (no preset, no cache_threshold) and key.
    old_seed = 7 + 2**40
    old_params = {**ledger.get_job(parent_id).params, "seed": old_seed}
    old_key = job_key_of({k: old_params[k] for k in sorted(RENDER_FIELDS_V1)}, version="farm.spec/1")
    execute_sql(pg_url, "UPDATE jobs SET seed = :seed, job_key = :key, params = jsonb_set("
                "params - 'preset' - 'cache_threshold', '{seed}', to_jsonb(CAST(:seed AS bigint))) WHERE id = :id",
                seed=old_seed, key=old_key, id=parent_id)
    parent = ledger.get_job(parent_id)
    assert parent.seed == old_seed and parent.params["seed"] == old_seed
    report = client.rerender(parent_id)
    child = ledger.get_job(report.job_id)
    assert child.seed == 7 and child.job_key != old_key
    work()
    done = client.rerender_report(child.id)
    assert done.match is True and done.frames_sha256 == parent.frames_sha256


def test_rerender_refuses_unfinished_jobs_and_times_out(client: Client, work: Work, run_farm: RunFarm) -> None:
    [queued] = client.submit(PROMPT, seed=24)
    with pytest.raises(InvalidInput) as info:
        client.rerender(queued)
    assert info.value.problems[0].rule == "succeeded"
    work()
    for bad in ({"timeout_s": -1}, {"poll_s": 0}, {"wait": "yes"}):
        with pytest.raises(InvalidInput):  # checked before the re-render job is written
            client.rerender(queued, **bad)  # type: ignore[arg-type]
    assert len(client.ledger.list_jobs()) == 1
    proc = run_farm("rerender", queued, "--wait", "--timeout", "0.5", "--poll", "0.1")
    assert proc.returncode == 124 and "not finished" in proc.stderr


# -- audit -------------------------------------------------------------------------------------


def test_audit_finds_missing_and_corrupt_files(
    client: Client, ledger: Ledger, work: Work, run_farm: RunFarm, tmp_path: Path
) -> None:
    items = [{"prompt": PROMPT, "seed": 31}, {"prompt": PROMPT, "seed": 32}]
    batch_id = client.submit_batch(write_manifest(tmp_path / "two.jsonl", items)).batch_id
    work()
    [hit] = client.submit(PROMPT, seed=31)  # a cache hit: the same file as the batch's first job
    outside = rendered(client, work, 33)
    report = client.audit()
    assert report.clean and report.checked == 4 and sorted(report.ok) == sorted(
        [*(j.id for j in ledger.batch_jobs(batch_id)), hit, outside])
    clean = run_farm("audit", "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout)["clean"] is True

    first, second = ledger.batch_jobs(batch_id)
    Path(str(first.output_uri).removeprefix("file://")).unlink()
    corrupted = Path(str(second.output_uri).removeprefix("file://"))
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))

    report = client.audit()
    assert not report.clean and report.ok == [outside]
    assert sorted(e.job_id for e in report.missing) == sorted([first.id, hit])
    assert all(e.detail == "file not found" for e in report.missing)
    [bad] = report.corrupt
    assert bad.job_id == second.id and bad.expected == second.file_sha256 and bad.actual != bad.expected
    proc = run_farm("audit", batch_id)
    assert proc.returncode == 1
    assert f"MISSING  {first.id}" in proc.stdout and f"CORRUPT  {second.id}" in proc.stdout
    assert hit not in proc.stdout  # scoped to the batch
    assert "2 checked: 0 ok, 1 missing, 1 corrupt" in proc.stderr


# -- star and sweep ----------------------------------------------------------------------------


def test_star_and_unstar(client: Client, ledger: Ledger, work: Work, run_farm: RunFarm) -> None:
    job_id = rendered(client, work, 41)
    assert client.star(job_id) is True and client.star(job_id) is False
    assert ledger.get_job(job_id).starred
    proc = run_farm("star", job_id, "--unstar")
    assert proc.returncode == 0 and "unstarred" in proc.stdout
    assert not ledger.get_job(job_id).starred
    assert [e.kind for e in ledger.events(job_id)][-2:] == ["starred", "unstarred"]


def test_sweep_records_parent_and_seeds(
    client: Client, ledger: Ledger, broker: Broker, work: Work, run_farm: RunFarm
) -> None:
    parent = ledger.get_job(rendered(client, work, 500, steps=4))
    client.star(parent.id)
    job_ids = client.sweep(parent.id, 2)
    jobs = [ledger.get_job(j) for j in job_ids]
    assert [j.seed for j in jobs] == [498, 499, 501, 502]
    for job in jobs:
        assert job.parent_job_id == parent.id and job.seed_strategy == "sweep" and job.priority == "interactive"
        differing = {k for k in parent.params if parent.params[k] != job.params[k]}
        assert differing == {"seed", "seed_strategy"}
    assert sorted(broker.job_ids("farm.interactive")) == sorted(job_ids)
    broker.clear()

    near_zero = ledger.get_job(rendered(client, work, 1))  # unstarred: any succeeded job may be swept
    proc = run_farm("sweep", near_zero.id, "--radius", "3", "--priority", "batch", "--json")
    payload = json.loads(proc.stdout)
    assert proc.returncode == 0 and payload["parent_job_id"] == near_zero.id
    assert [ledger.get_job(j).seed for j in payload["job_ids"]] == [0, 2, 3, 4]
    assert sorted(broker.job_ids("farm.batch")) == sorted(payload["job_ids"])


def test_sweep_refuses_bad_requests(client: Client, ledger: Ledger, broker: Broker, work: Work) -> None:
    done = rendered(client, work, 600)
    [queued] = client.submit(PROMPT, seed=601)
    broker.clear()
    for job_id, radius, rule in [(queued, 1, "succeeded"), (done, 0, "min_1"), (done, 10_001, "sweep_radius"),
                                 (done, "2", "sweep_radius")]:
        with pytest.raises(InvalidInput) as info:
            client.sweep(job_id, radius)  # type: ignore[arg-type]
        assert info.value.problems[0].rule == rule
    with pytest.raises(InvalidInput) as info:
        client.sweep(done, 1, priority="urgent")
    assert info.value.fields == ["priority"]
    assert len(ledger.list_jobs()) == 2 and broker.total() == 0
