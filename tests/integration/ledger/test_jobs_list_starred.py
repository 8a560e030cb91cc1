"""``farm jobs list --starred / --unstarred``, run as a real subprocess of the installed ``farm`` script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm.ledger import Ledger, NewJob
from farm.spec import parse_spec

FARM = Path(sys.executable).with_name("farm")


def farm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    return subprocess.run([str(FARM), *args], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_jobs_list_starred(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    env = {"FARM_DATA_DIR": str(tmp_path), "FARM_DATABASE_URL": url}
    with Ledger(url) as ledger:
        ids = ledger.add_jobs([NewJob.from_spec(parse_spec({"prompt": f"shot {i}", "seed": i})) for i in range(4)])
        star = ids[2]
        assert ledger.set_starred(star, True)
        # starred then unstarred again: not starred any more
        assert ledger.set_starred(ids[0], True) and ledger.set_starred(ids[0], False)
        assert [j.id for j in ledger.list_jobs(starred=True)] == [star]
        assert sorted(j.id for j in ledger.list_jobs(starred=False)) == sorted(set(ids) - {star})
        assert len(ledger.list_jobs()) == 4
        assert ledger.list_jobs(starred=True, status="running") == []

    listed = farm("jobs", "list", "--starred", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["prompt"], r["starred"]) for r in rows] == [(star, "shot 2", True)]

    table = farm("jobs", "list", "--starred", env=env)
    assert table.returncode == 0, table.stderr
    job_lines = table.stdout.splitlines()[1:]  # below the header
    assert len(job_lines) == 1 and job_lines[0].startswith(star) and "shot 2" in job_lines[0]
    assert not any(other in table.stdout for other in ids if other != star)

    unstarred = json.loads(farm("jobs", "list", "--unstarred", "--json", env=env).stdout)
    assert sorted(r["id"] for r in unstarred) == sorted(set(ids) - {star})
    assert not any(r["starred"] for r in unstarred)
    everything = json.loads(farm("jobs", "list", "--json", env=env).stdout)
    assert len(everything) == 4

    # combined with another filter, and nothing starred in it
    none = farm("jobs", "list", "--starred", "--status", "succeeded", env=env)
    assert none.returncode == 0 and none.stdout.strip() == "no jobs"
