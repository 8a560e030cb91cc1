"""The ledger database goes away for ~20 s mid-batch.

Workers keep their outputs, retry, and every job ends recorded, nothing lost or duplicated.

The database is a PRIVATE Postgres cluster (``initdb`` into a temporary directory, its own port and
socket directory), so stopping it disturbs nobody. As root, the Postgres binaries run as the
``postgres`` user (they refuse to run as root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from farm_harness import FARM, FarmEnv, RedisServer, assert_exactly_once, free_port, wait_until

PG_BINDIR_FALLBACK = "/usr/lib/postgresql/15/bin"


def pg_bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    return Path(PG_BINDIR_FALLBACK)


class PrivatePostgres:
    """A throwaway Postgres cluster in its own directory, on its own port."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.bindir = pg_bindir()
        self.as_postgres = os.geteuid() == 0

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        argv = [str(self.bindir / tool), *args]
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr or proc.stdout}")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/farm"

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "farm")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -h 127.0.0.1 -F"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "pg.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    root = Path(tempfile.mkdtemp(prefix="farm-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    pg = PrivatePostgres(root)
    try:
        pg.init()
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def test_ledger_outage_mid_batch(tmp_path: Path, private_pg: PrivatePostgres, redis_server: RedisServer) -> None:
    env = FarmEnv(tmp=tmp_path, database_url=private_pg.url, broker_url=redis_server.url)
    env.overrides.update(FARM_LEASE_S="60")
    try:
        upgrade = subprocess.run([FARM, "db", "upgrade"],
                                 env=env.env(), capture_output=True, text=True, timeout=120, check=False)
        assert upgrade.returncode == 0, upgrade.stderr
        env.start_worker("a", wait=False)
        env.start_worker("b")
        env.wait_ready(env.workers[0])
        ids = env.submit(env.new_jobs(16, prefix="outage", tags=[{"fault": "sleep:0.5"}] * 16))
        wait_until(lambda: sum(j.status.value == "succeeded" for j in env.jobs(ids)) >= 3, 120,
                   what="3 jobs done before the outage")
        running = sum(j.status.value == "running" for j in env.jobs(ids))
        env.ledger.close()
        private_pg.stop("fast")
        down_at = time.monotonic()
        time.sleep(20)
        private_pg.start()
        outage = time.monotonic() - down_at
        jobs = env.wait_terminal(ids, 240)
        assert_exactly_once(env, ids)
        assert all(w.alive() for w in env.workers)
        assert all(j.attempts == 1 for j in jobs), [j.attempts for j in jobs]
        retried = sum(w.text().count("unavailable") for w in env.workers)
        assert retried > 0, "the workers never noticed the outage"
        print(f"\n[numbers] ledger down {outage:.1f} s mid-batch with {running} job(s) rendering: 16/16 jobs "
              f"succeeded exactly once, every job in 1 attempt; {retried} retried ledger calls logged")
    except BaseException:
        print(f"\n---------- worker logs ----------\n{env.logs()}")
        raise
    finally:
        env.close()
