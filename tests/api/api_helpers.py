"""Helpers of the HTTP API tests (imported as ``api_helpers``): a private redis-server per test,
decoding the Celery messages waiting in it, and counting ledger rows with plain SQL."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from farm.queue.names import QUEUE_BATCH, QUEUE_INTERACTIVE

QUEUES = (QUEUE_INTERACTIVE, QUEUE_BATCH)
#: A token long enough for the API's rule (16+ characters); never a real secret.
TOKEN = "test-token-" + "0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REDIS_START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` of the test's own, on a free loopback port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed: the API tests need a private Redis", pytrace=False)
        self.port = free_port()
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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def lengths(self) -> dict[str, int]:
        return {q: int(self.client.llen(q)) for q in QUEUES}

    def job_ids(self, queue: str) -> list[str]:
        """Job ids of the messages waiting in ``queue``, oldest first."""
        return [decode_job_id(raw) for raw in reversed(self.client.lrange(queue, 0, -1))]


def decode_job_id(raw: bytes) -> str:
    """The job id a Celery (kombu Redis transport) message for ``farm.render`` carries."""
    message = json.loads(raw)
    assert message["headers"]["task"] == "farm.render"
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _embed = json.loads(body)
    assert kwargs == {} and len(args) == 1, (args, kwargs)
    return str(args[0])


def count_rows(database_url: str, table: str) -> int:
    """Rows in a ledger table, read with plain SQL (not through the code under test)."""
    from sqlalchemy import create_engine, text

    assert table in ("jobs", "batches", "events", "workers")
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()
