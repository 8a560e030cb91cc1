"""The real servers.

``farm api`` (uvicorn on a free loopback port) and ``farm flower``, as subprocesses on the
real Postgres and a private Redis; and the API staying torch-free.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_helpers import AUTH, TOKEN, PrivateRedis, queued_job_ids
from private_redis import free_port, stop_process

FARM = str(Path(sys.executable).with_name("farm"))
START_TIMEOUT_S = 60.0
FLOWER_SECRET = "ops:flower-" + "pw-9f8e7d6c5b4a"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(extra)
    return env


class Server:
    """A farm console-script server; its output is collected in a file (read after it stopped)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen([FARM, *args], env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def wait_until(self, url: str, expect: int = 200) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(url, timeout=2).status_code == expect:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"server did not answer {url} in {START_TIMEOUT_S} s: {self.output()}")

    def cmdline(self) -> str:
        return Path(f"/proc/{self.proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=20)  # SIGTERM, then SIGKILL
        self._out.close()

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def test_farm_api_serves_with_uvicorn(
    servers: list[Server], pg_url: str, redis_server: PrivateRedis, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_env(FARM_DATA_DIR=str(tmp_path / "data"), FARM_DATABASE_URL=pg_url, FARM_BROKER_URL=redis_server.url,
                    FARM_API_TOKEN=TOKEN, FARM_API_PORT=str(port))
    server = Server(["api", "--host", "127.0.0.1"], env, tmp_path / "api.log")
    servers.append(server)
    base = f"http://127.0.0.1:{port}"
    server.wait_until(f"{base}/healthz")
    assert httpx.get(f"{base}/openapi.json").status_code == 401
    assert httpx.get(f"{base}/openapi.json", headers=AUTH).json()["info"]["title"] == "farm"
    r = httpx.post(f"{base}/v1/jobs", json={"prompt": "a fox", "seed": 1}, headers=AUTH)
    assert r.status_code == 201
    [job_id] = r.json()["job_ids"]
    assert queued_job_ids(redis_server, "farm.interactive") == [job_id]
    assert "server" not in {k.lower() for k in r.headers}
    assert TOKEN not in server.cmdline()
    server.stop()
    assert server.proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    assert "Application shutdown complete" in server.output()
    assert TOKEN not in server.output()


def test_farm_api_insecure_local_on_loopback(servers: list[Server], pg_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(FARM_DATA_DIR=str(tmp_path / "data"), FARM_DATABASE_URL=pg_url)
    server = Server(["api", "--host", "127.0.0.1", "--port", str(port), "--insecure-local"], env, tmp_path / "a.log")
    servers.append(server)
    base = f"http://127.0.0.1:{port}"
    server.wait_until(f"{base}/healthz")
    assert httpx.get(f"{base}/metrics").status_code == 200
    server.stop()
    assert "WITHOUT authentication" in server.output()


def test_farm_flower_requires_basic_auth_and_shows_the_workers(
    servers: list[Server], redis_server: PrivateRedis, pg_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_env(FARM_DATA_DIR=str(tmp_path / "data"), FARM_BROKER_URL=redis_server.url,
                    FARM_DATABASE_URL=pg_url, FARM_FLOWER_BASIC_AUTH=FLOWER_SECRET)
    server = Server(["flower", "--port", str(port)], env, tmp_path / "flower.log")
    servers.append(server)
    base = f"http://127.0.0.1:{port}"
    server.wait_until(f"{base}/healthcheck")  # public, as documented: keep the port private
    user, _, password = FLOWER_SECRET.partition(":")
    assert httpx.get(f"{base}/").status_code == 401
    assert httpx.get(f"{base}/api/workers").status_code == 401
    assert httpx.get(f"{base}/", auth=(user, "wrong")).status_code == 401
    assert httpx.get(f"{base}/workers", auth=(user, password)).status_code == 200
    assert httpx.get(f"{base}/metrics").status_code == 200  # public too: documented in ops/README.md
    assert password not in server.cmdline()
    # a real worker shows up under its farm node name
    worker = Server(["worker", "--device", "cpu"], env, tmp_path / "worker.log")
    servers.append(worker)
    name = "farm-cpu@"  # the stable name: no process id
    deadline = time.monotonic() + START_TIMEOUT_S
    seen: list[str] = []
    while time.monotonic() < deadline and not any(n.startswith(name) for n in seen):
        time.sleep(1)
        answer = httpx.get(f"{base}/api/workers", params={"refresh": "1"}, auth=(user, password), timeout=10)
        seen = list(answer.json()) if answer.status_code == 200 else []
    assert any(n.startswith(name) for n in seen), (seen, worker.output()[-2000:])
    worker.stop()
    server.stop()
    assert password not in server.output()


def test_farm_flower_refuses_to_start_without_basic_auth(tmp_path: Path) -> None:
    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FARM, "flower", "--port", str(free_port())], capture_output=True, text=True,
                              timeout=60, env=clean_env(FARM_DATA_DIR=str(tmp_path), **env))

    missing = run()
    assert missing.returncode == 2 and "FARM_FLOWER_BASIC_AUTH" in missing.stderr
    for bad in ("no-colon-secret-123", ":only-password-123", "admin:"):
        refused = run(FARM_FLOWER_BASIC_AUTH=bad)
        assert refused.returncode == 2, bad
        assert "user:password" in refused.stderr
        assert bad.strip(":") not in refused.stderr + refused.stdout


_TORCH_FREE_CHILD = """
import json, sys
from fastapi.testclient import TestClient
from farm.api.app import create_app
from farm.settings import Settings
import farm.cli.api, farm.cli.flower
settings = Settings(data_dir=sys.argv[1], api_token=sys.argv[2])
with TestClient(create_app(settings), headers={"Authorization": "Bearer " + sys.argv[2]}) as c:
    submitted = c.post("/v1/jobs", json={"prompt": "a fox", "seed": 1}).status_code
    batch = c.post("/v1/batches", json={"items": [{"prompt": "b", "seeds": [1, 2]}]}).status_code
    metrics = c.get("/metrics").status_code
heavy = [m for m in ("torch", "diffusers", "transformers", "numpy", "farm.engine", "farm.worker.task")
         if m in sys.modules]
print(json.dumps({"submitted": submitted, "batch": batch, "metrics": metrics, "heavy": heavy}))
"""


def test_the_api_never_imports_the_engine_stack(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _TORCH_FREE_CHILD, str(tmp_path / "data"), TOKEN],
                         capture_output=True, text=True, timeout=120, env=clean_env(), check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"submitted": 201, "batch": 201, "metrics": 200, "heavy": []}

