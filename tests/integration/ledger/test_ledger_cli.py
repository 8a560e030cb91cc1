"""``farm db`` and ``farm jobs``, run as real subprocesses of the installed ``farm`` script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm.ledger import Ledger, NewJob
from farm.settings import EMBEDDED_LEDGER_FILENAME
from farm.spec import parse_spec

FARM = Path(sys.executable).with_name("farm")

#: The migrations' head (what `farm db upgrade` brings a fresh database to).
HEAD = Ledger.head_revision()


def farm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    return subprocess.run([str(FARM), *args], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=False)


def test_db_upgrade_on_a_fresh_embedded_sqlite_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    env = {"FARM_DATA_DIR": str(data_dir)}
    done = farm("db", "upgrade", env=env)
    assert done.returncode == 0, done.stderr
    assert f"upgraded empty -> {HEAD}" in done.stdout
    assert (data_dir / EMBEDDED_LEDGER_FILENAME).is_file()
    again = farm("db", "upgrade", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"url": json.loads(again.stdout)["url"], "from": HEAD, "to": HEAD}
    check = farm("db", "check", env=env)
    assert check.returncode == 0 and "ok" in check.stdout, check.stderr


def test_db_upgrade_on_a_sqlite_database_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'farm.db'}"
    env = {"FARM_DATA_DIR": str(tmp_path / "unused"), "FARM_DATABASE_URL": url}
    before = farm("db", "current", "--json", env=env)
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["current"] is None
    assert farm("db", "upgrade", env=env).returncode == 0
    assert (tmp_path / "elsewhere" / "farm.db").is_file()
    assert not (tmp_path / "unused").exists()
    after = json.loads(farm("db", "current", "--json", env=env).stdout)
    assert after["current"] == after["head"] == HEAD and after["at_head"]


@pytest.mark.postgres
def test_db_commands_on_a_fresh_postgres_database(pg_empty_url: str, tmp_path: Path) -> None:
    env = {"FARM_DATA_DIR": str(tmp_path), "FARM_DATABASE_URL": pg_empty_url}
    check = farm("db", "check", env=env)
    assert check.returncode == 1
    assert "farm db upgrade" in check.stderr
    listing = farm("jobs", "list", env=env)  # a server ledger is never migrated implicitly
    assert listing.returncode == 1 and "farm db upgrade" in listing.stderr

    done = farm("db", "upgrade", env=env)
    assert done.returncode == 0, done.stderr
    assert f"upgraded empty -> {HEAD}" in done.stdout
    current = farm("db", "current", env=env)
    assert current.returncode == 0 and f"current: {HEAD}" in current.stdout
    check = farm("db", "check", "--json", env=env)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["ok"] is True
    with Ledger(pg_empty_url) as ledger:
        assert ledger.schema_diff() == []


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_concurrent_upgrades_of_a_fresh_database(backend: str, request: pytest.FixtureRequest,
                                                 tmp_path: Path) -> None:
    """Several machines running `farm db upgrade` at once: all succeed, the schema is created once."""
    env = {**os.environ, "FARM_DATA_DIR": str(tmp_path / "data")}
    env = {k: v for k, v in env.items() if k != "FARM_DATABASE_URL"}
    if backend == "postgres":
        env["FARM_DATABASE_URL"] = request.getfixturevalue("pg_empty_url")
    procs = [subprocess.Popen([str(FARM), "db", "upgrade"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert sum(f"upgraded empty -> {HEAD}" in out for out, _ in outputs) == 1
    check = farm("db", "check", env={k: v for k, v in env.items() if k.startswith("FARM_")})
    assert check.returncode == 0, check.stderr


def test_db_upgrade_reports_an_unreachable_database(tmp_path: Path) -> None:
    env = {"FARM_DATA_DIR": str(tmp_path), "FARM_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}
    done = farm("db", "upgrade", env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ledger postgresql://postgres@127.0.0.1:1/x unavailable")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_jobs_list_and_show(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    env = {"FARM_DATA_DIR": str(tmp_path), "FARM_DATABASE_URL": url}
    with Ledger(url) as ledger:
        specs = [parse_spec({"prompt": f"scene {i}", "seed": i, "tags": {"n": str(i)}}) for i in range(3)]
        new_jobs = [NewJob.from_spec(s) for s in specs]
        batch_id, _ = ledger.create_batch("e" * 64, "three", "three.yaml", new_jobs)
        loose = ledger.add_job(NewJob.from_spec(parse_spec({"prompt": "alone", "seed": 99})))
        ledger.claim(loose, worker_host="gpu-7", worker_device="cuda:0", lease_s=60)
        ledger.record_failure(loose, error_type="OutOfMemory", error_message="CUDA OOM", retry=True)

    listed = farm("jobs", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == 4
    assert {r["prompt"] for r in rows} == {"scene 0", "scene 1", "scene 2", "alone"}
    by_batch = json.loads(farm("jobs", "list", "--json", "--batch", batch_id, env=env).stdout)
    assert sorted(r["seed"] for r in by_batch) == [0, 1, 2]
    assert all(r["batch_id"] == batch_id and r["status"] == "queued" for r in by_batch)
    limited = json.loads(farm("jobs", "list", "--json", "--limit", "2", env=env).stdout)
    assert len(limited) == 2
    none_running = json.loads(farm("jobs", "list", "--json", "--status", "running", env=env).stdout)
    assert none_running == []

    table = farm("jobs", "list", env=env)
    assert table.returncode == 0 and loose in table.stdout and "scene 1" in table.stdout
    bad_status = farm("jobs", "list", "--status", "done", env=env)
    assert bad_status.returncode == 2 and "done" in bad_status.stderr

    shown = farm("jobs", "show", loose, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    payload = json.loads(shown.stdout)
    assert payload["job"]["id"] == loose and payload["job"]["error_type"] == "OutOfMemory"
    assert payload["job"]["attempts"] == 1
    assert [(e["kind"], e["from_status"], e["to_status"]) for e in payload["events"]] == [
        ("created", None, "queued"), ("claimed", "queued", "running"), ("retried", "running", "queued"),
    ]
    text_view = farm("jobs", "show", loose, env=env)
    assert text_view.returncode == 0
    assert "OutOfMemory: CUDA OOM" in text_view.stdout and "retried" in text_view.stdout
    assert "gpu-7" in text_view.stdout


def test_jobs_show_unknown_id_fails_clearly(sqlite_url: str, tmp_path: Path) -> None:
    env = {"FARM_DATA_DIR": str(tmp_path), "FARM_DATABASE_URL": sqlite_url}
    unknown = "00000000-0000-4000-8000-000000000000"
    done = farm("jobs", "show", unknown, env=env)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == f"error: no job with id '{unknown}'"
    as_json = farm("jobs", "show", unknown, "--json", env=env)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout) == {"error": "JobNotFound", "message": f"no job with id '{unknown}'"}
    malformed = farm("jobs", "show", "no-such-job", env=env)  # not an id at all: bad input, exit 2
    assert malformed.returncode == 2 and "job_id: must be a job or batch id" in malformed.stderr


def test_jobs_list_on_a_fresh_embedded_data_dir(tmp_path: Path) -> None:
    done = farm("jobs", "list", env={"FARM_DATA_DIR": str(tmp_path / "d")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no jobs"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_workers_list(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    env = {"FARM_DATA_DIR": str(tmp_path), "FARM_DATABASE_URL": url}
    empty = farm("workers", env=env)
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.strip() == "no workers"
    assert json.loads(farm("workers", "--json", env=env).stdout) == []
    with Ledger(url) as ledger:
        ledger.worker_seen("farm-gpu0@box", host="box", device="cuda:0", pid=4242, state="circuit_open",
                           consecutive_failures=3, jobs_succeeded=5, jobs_failed=3, detail={"error": "Oom"})
        ledger.worker_seen("farm-cpu-7@box", host="box", device="cpu", pid=7, state="idle")
    rows = json.loads(farm("workers", "--json", env=env).stdout)
    assert [(r["name"], r["state"], r["pid"]) for r in rows] == [
        ("farm-cpu-7@box", "idle", 7), ("farm-gpu0@box", "circuit_open", 4242)]
    assert rows[1]["detail"] == {"error": "Oom"} and rows[1]["consecutive_failures"] == 3
    table = farm("workers", env=env)
    assert table.returncode == 0
    [gpu_line] = [line for line in table.stdout.splitlines() if line.startswith("farm-gpu0@box")]
    assert "circuit_open" in gpu_line and "cuda:0" in gpu_line and "4242" in gpu_line


def test_jobs_show_names_the_leader_of_a_follower(sqlite_url: str, tmp_path: Path) -> None:
    env = {"FARM_DATA_DIR": str(tmp_path), "FARM_DATABASE_URL": sqlite_url}
    spec = parse_spec({"prompt": "twice", "seed": 5})
    with Ledger(sqlite_url) as ledger:
        leader, follower = ledger.add_jobs([NewJob.from_spec(spec), NewJob.from_spec(spec, batch_index=3)])
        ledger.mark_enqueued([leader])
    shown = farm("jobs", "show", follower, env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"follower of:      {leader}" in shown.stdout
    assert "batch index:      3" in shown.stdout and "enqueued:         -" in shown.stdout
    payload = json.loads(farm("jobs", "show", leader, "--json", env=env).stdout)
    assert payload["job"]["enqueued_at"] is not None and payload["job"]["cache_of_job_id"] is None
