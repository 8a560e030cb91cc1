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
    # the review room's templates and static files ship in the wheel: the installed app serves them
    served = run([str(venv / "bin" / "python"), "-c", _SERVE_REVIEW_PAGES], cwd=away,
                 env={**env, "FARM_DATA_DIR": str(tmp_path / "data"), "FARM_API_TOKEN": "wheel-test-" + "x" * 16})
    assert served.stdout.split() == ["login", "200", "css", "200", "js", "200", "docs", "303"], served.stdout


#: Run by the installed wheel's Python: the login page, the page's CSS/JS after logging in, /docs without a session.
_SERVE_REVIEW_PAGES = """
import re
from fastapi.testclient import TestClient
from farm.api.app import create_app
with TestClient(create_app(), base_url="http://127.0.0.1") as c:
    page = c.get("/ui/login")
    print("login", page.status_code if "csrf" in page.text or "token" in page.text else "no-form")
    c.post("/ui/login", data={"token": "wheel-test-" + "x" * 16}, follow_redirects=False)
    css = [u for u in re.findall(r'(?:href|src)="([^"]+)"', c.get("/ui/").text) if u.endswith((".css", ".js"))]
    for suffix, name in ((".css", "css"), (".js", "js")):
        url = next(u for u in css if u.endswith(suffix))
        print(name, c.get(url).status_code)
with TestClient(create_app(), base_url="http://127.0.0.1") as anon:
    print("docs", anon.get("/docs", follow_redirects=False).status_code)
"""
