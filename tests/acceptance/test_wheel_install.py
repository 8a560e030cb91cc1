"""A non-editable install runs its migrations.

The wheel built from this repository, installed into a fresh virtualenv (producer dependencies
only, pinned by constraints.txt), migrates an empty Postgres database and an empty SQLite file
with ``farm db upgrade`` — the Alembic scripts come from inside the installed package, not from
the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 600


def run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
@pytest.mark.timeout(2 * INSTALL_TIMEOUT_S)
def test_the_wheel_migrates_an_empty_database(tmp_path: Path, pg_empty_url: str) -> None:
    dist, venv, away = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    away.mkdir()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(REPO)], cwd=away)
    [wheel] = dist.glob("farm-*.whl")
    run([sys.executable, "-m", "venv", str(venv)], cwd=away)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-c", str(REPO / "constraints.txt"),
         str(wheel)], cwd=away)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "PYTHON"))}
    where = run([str(venv / "bin" / "python"), "-c", "from farm.ledger import db; print(db.MIGRATIONS_DIR)"],
                cwd=away, env=env).stdout.strip()
    assert where.startswith(str(venv)) and Path(where, "versions", "0001_initial.py").is_file(), where
    farm = str(venv / "bin" / "farm")
    for url in (pg_empty_url, f"sqlite:///{tmp_path / 'ledger.sqlite3'}"):
        done = run([farm, "db", "upgrade", "--database-url", url], cwd=away, env=env)
        assert "upgraded empty -> " in done.stdout, done.stdout
        check = run([farm, "db", "check", "--database-url", url], cwd=away, env=env)
        assert check.returncode == 0
    light = run([str(venv / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
                cwd=away, env=env)
    assert light.stdout.strip() == "None"  # a producer install: no torch
