"""``farm health`` (a worker container's healthcheck) against the test Postgres and a private Redis.

Healthy while both answer; once Redis is stopped it exits 1 within its timeout and names the
broker check. The URLs reach it as compose passes them: files named by FARM_*_FILE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from private_redis import PrivateRedis

FARM = str(Path(sys.executable).with_name("farm"))
TIMEOUT_S = 3.0


def farm_health(tmp_path: Path, database_url: str, broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "database_url").write_text(database_url + "\n")
    (secrets / "broker_url").write_text(broker_url + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_DATA_DIR=str(tmp_path / "data"), FARM_DATABASE_URL_FILE=str(secrets / "database_url"),
               FARM_BROKER_URL_FILE=str(secrets / "broker_url"))
    return subprocess.run([FARM, "health", "--timeout", str(TIMEOUT_S), *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_healthy_then_the_broker_check_fails_once_redis_stops(pg_url: str, redis_server: PrivateRedis,
                                                              tmp_path: Path) -> None:
    ok = farm_health(tmp_path, pg_url, redis_server.url, "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["healthy"] and [c["name"] for c in report["checks"]] == ["ledger", "broker", "device", "models"]
    assert all(c["ok"] for c in report["checks"])
    assert f"127.0.0.1:{redis_server.port}" in {c["name"]: c for c in report["checks"]}["broker"]["detail"]

    redis_server.stop()
    start = time.monotonic()
    down = farm_health(tmp_path, pg_url, redis_server.url)
    elapsed = time.monotonic() - start
    assert down.returncode == 1, down.stdout + down.stderr
    lines = {line.split()[1]: line for line in down.stdout.splitlines()}
    assert lines["broker"].startswith("FAIL") and f"127.0.0.1:{redis_server.port}" in lines["broker"]
    assert all(lines[name].startswith("ok") for name in ("ledger", "device", "models")), down.stdout
    assert elapsed < TIMEOUT_S + 10, elapsed  # the start-up of the command and the deadline


def test_the_ledger_check_fails_on_a_database_that_is_not_there(pg_url: str, redis_server: PrivateRedis,
                                                                tmp_path: Path) -> None:
    missing = pg_url.rsplit("/", 1)[0] + "/farm_t_no_such_database"
    down = farm_health(tmp_path, missing, redis_server.url)
    assert down.returncode == 1
    lines = {line.split()[1]: line for line in down.stdout.splitlines()}
    assert lines["ledger"].startswith("FAIL") and lines["broker"].startswith("ok"), down.stdout
