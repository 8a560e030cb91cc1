"""The README's "Running it on one machine" block, run as written.

``createdb``, the two exports, ``farm db upgrade``, two CPU workers, a submit,
``farm batch examples/day.yaml``, ``farm wait`` and ``farm results``.

Only the service addresses are swapped for the test's own (a database name of its own on the real
Postgres, a private ``redis-server``); everything else is the README's text. The database the
recipe creates is dropped afterwards; every process the block starts is killed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pg
import pytest
from private_redis import PrivateRedis

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
HEADING = "### Running it on one machine"
README_DB_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/farm"
README_CREATEDB = "createdb -h 127.0.0.1 -U postgres farm"
README_BROKER = "redis://127.0.0.1:6379/5"
RECIPE_TIMEOUT_S = 240

def recipe() -> str:
    """The first ```bash block after the heading."""
    after = README.read_text(encoding="utf-8").split(HEADING, 1)[1]
    match = re.search(r"```bash\n(.*?)```", after, re.S)
    assert match, "no bash block under the heading"
    return match.group(1)


def test_the_recipe_creates_its_database_and_uses_a_redis_db_of_its_own() -> None:
    block = recipe()
    assert README_CREATEDB in block and README_DB_URL in block
    assert README_BROKER in block and "6379/0" not in block
    assert block.index("createdb") < block.index("farm db upgrade") < block.index("farm worker")


@pytest.fixture
def database(pg_admin: pg.PgAdmin) -> Iterator[str]:
    """A name for the recipe's database (the recipe creates it); dropped afterwards."""
    name = f"{pg.DATABASE_PREFIX}readme_{uuid.uuid4().hex[:12]}"
    assert not pg_admin.exists(name)
    pg_admin.adopt(name)
    yield name
    pg_admin.drop(name)


@pytest.mark.timeout(RECIPE_TIMEOUT_S + 60)
def test_the_readme_recipe_runs_as_written(tmp_path: Path, database: str) -> None:
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = PrivateRedis(redis_dir)
    block = (recipe()
             .replace(README_CREATEDB, README_CREATEDB.removesuffix("farm") + database)
             .replace(README_DB_URL, README_DB_URL.removesuffix("farm") + database)
             .replace(README_BROKER, server.url))
    script = "set -euo pipefail\n" + block
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               FARM_DATA_DIR=str(tmp_path / "data"), FARM_TORCH_THREADS="1", PYTHONHASHSEED="0")
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    # Files, not pipes: the background workers keep the block's output open after it ends.
    with open(out_path, "w") as out_file, open(err_path, "w") as err_file:
        proc = subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env, stdout=out_file, stderr=err_file,
                                start_new_session=True)
    try:
        proc.wait(timeout=RECIPE_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the two background workers
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        server.stop()
    out, err = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 0, f"stdout:\n{out[-4000:]}\nstderr:\n{err[-8000:]}"
    rows = list(csv.DictReader(io.StringIO(out[out.index("job_id,"):])))
    # (the background workers share the block's output: keep the result rows of the batch)
    rows = [r for r in rows if r.get("batch_id") and r["batch_id"] == rows[0]["batch_id"]]
    assert len(rows) == 33, (len(rows), out[:3000])
    assert {r["status"] for r in rows} == {"succeeded"}, rows[:2]
    assert all(Path(r["video"]).is_file() and Path(r["poster"]).is_file() for r in rows)
    assert "done" in err  # farm wait's last line
