"""The runbook's ledger backup and restore (ops/ledger/backup.sh, restore.sh) on a real Postgres.

A ledger with a rendered job (outputs, events, fingerprints) and queued ones is dumped with
``pg_dump``, restored with ``pg_restore`` into an empty database, and every table compares equal;
``farm db check`` and ``farm results`` work on the copy; a restore into a non-empty database is
refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pg
import psycopg

REPO = Path(__file__).resolve().parents[2]
FARM = str(Path(sys.executable).with_name("farm"))
TABLES = ("alembic_version", "batches", "jobs", "events", "models", "workers", "outputs")


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}", FARM_DATA_DIR=str(tmp_path / "data"),
               FARM_TORCH_THREADS="1", **extra)
    return env


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


def snapshot(url: str) -> dict[str, list[Any]]:
    """Every row of farm's tables, in a stable order (read with plain SQL)."""
    with psycopg.connect(pg.libpq_url(url)) as conn:
        return {t: sorted(map(repr, conn.execute(f"SELECT * FROM {t}").fetchall())) for t in TABLES}


def test_backup_and_restore_the_ledger(pg_url: str, pg_empty_url: str, tmp_path: Path) -> None:
    url_file = tmp_path / "database_url"
    url_file.write_text(pg_url)
    env = env_for(tmp_path, FARM_DATABASE_URL=pg_url)
    rendered = run([FARM, "render", "a lighthouse at dusk", "--seed", "7", "--steps", "2", "--json"], env)
    assert rendered.returncode == 0, rendered.stderr
    job_id = json.loads(rendered.stdout)["job_id"]
    queued = run([FARM, "submit", "a boat", "--seed", "1", "--steps", "2", "--priority", "batch"], env)
    assert queued.returncode == 0, queued.stderr
    before = snapshot(pg_url)
    assert len(before["jobs"]) == 2 and before["events"] and before["outputs"] and before["models"]

    dump = tmp_path / "ledger.dump"
    backup = run([str(REPO / "ops/ledger/backup.sh"), str(dump)],
                 env_for(tmp_path, FARM_DATABASE_URL_FILE=str(url_file)))  # the URL from a secret file
    assert backup.returncode == 0, backup.stderr
    assert dump.stat().st_size > 0 and oct(dump.stat().st_mode & 0o777) == "0o600"
    assert pg_url not in backup.stdout + backup.stderr  # the URL is never printed

    restore = run([str(REPO / "ops/ledger/restore.sh"), str(dump), pg_empty_url], env)
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert "schema matches" in restore.stdout and "ledger restored" in restore.stdout
    assert snapshot(pg_empty_url) == before

    results = run([FARM, "results", job_id], env_for(tmp_path, FARM_DATABASE_URL=pg_empty_url))
    assert results.returncode == 0, results.stderr
    [row] = json.loads(results.stdout)
    assert row["status"] == "succeeded" and row["file_sha256"] == json.loads(rendered.stdout)["file_sha256"]

    again = run([str(REPO / "ops/ledger/restore.sh"), str(dump), pg_empty_url], env)
    assert again.returncode == 2 and "not empty" in again.stderr
    assert snapshot(pg_empty_url) == before  # untouched
