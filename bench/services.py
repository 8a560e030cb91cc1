"""Private services for the benchmarks.

A ``redis-server`` on a free loopback port and scratch Postgres databases (created and dropped
by the benchmark; nothing else is touched).
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_redis(directory: Path) -> Iterator[str]:
    """A private redis-server; yields ``redis://127.0.0.1:PORT``."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(directory)], stdout=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        client.close()
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def scratch_databases(admin_url: str, count: int) -> Iterator[list[str]]:
    """``count`` fresh, migrated Postgres databases; yields their SQLAlchemy URLs."""
    from farm.ledger import Ledger

    admin = psycopg.connect(admin_url, autocommit=True)
    names = [f"farm_bench_{secrets.token_hex(6)}" for _ in range(count)]
    try:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
        base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        urls = [f"{base}/{name}" for name in names]
        for url in urls:
            with Ledger(url) as ledger:
                ledger.upgrade()
        yield urls
    finally:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
