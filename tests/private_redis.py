"""A ``redis-server`` of a test's own, on a free loopback port, without persistence.

Imported as ``private_redis`` by the API and producer tests and by ``tests/conftest.py``; the farm
fault tests use their restartable AOF variant in ``tests/acceptance/farm/farm_harness.py``. Nothing
else's Redis is touched: no FLUSHALL anywhere.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10) -> None:
    """Terminate ``proc`` if it still runs, then kill it if it has not exited within ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)

REDIS_START_TIMEOUT_S = 10.0


def decode_job_id(raw: Any) -> str:
    """The job id a Celery (kombu Redis transport) message for ``farm.render`` carries."""
    message = json.loads(raw)
    assert message["headers"]["task"] == "farm.render"
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _embed = json.loads(body)
    assert kwargs == {} and len(args) == 1, (args, kwargs)
    return str(args[0])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """Started on construction (fails the test if it cannot start); :meth:`stop` ends it."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed: these tests need a private Redis", pytrace=False)
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(host="127.0.0.1", port=self.port, db=0)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail(f"private redis-server on port {self.port} did not start", pytrace=False)
                time.sleep(0.02)

    def stop(self) -> None:
        self.client.close()
        stop_process(self.proc)
