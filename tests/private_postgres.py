"""A PRIVATE Postgres cluster for fault tests, so stopping it disturbs nobody.

``initdb`` into a temporary directory, its own port and socket directory. As root, the Postgres binaries run as the
``postgres`` user (they refuse to run as root). ``private_pg`` is the fixture: an initialised,
running cluster with a database ``farm``; the test may stop and start it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from private_redis import free_port

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
