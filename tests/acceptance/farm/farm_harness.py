"""The farm fault tests' harness.

A private Redis, worker subprocesses, the FARM_* environment, job submission, bounded waits and the
exactly-once checks. Imported by tests/acceptance/farm/conftest.py (the fixtures) and by the test modules (a
uniquely named module: ``conftest`` names clash across test folders).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from private_redis import stop_process

from farm.ledger import JobRecord, Ledger, NewJob
from farm.queue.app import make_app
from farm.queue.enqueue import enqueue_jobs
from farm.settings import Settings
from farm.spec import parse_spec

FARM = str(Path(sys.executable).with_name("farm"))
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
#: A tiny render (~0.1-0.5 s on one CPU thread).
SMALL = {"steps": 2, "width": 32, "height": 32, "num_frames": 9}
WORKER_READY_S = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, *, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- a private redis-server ---------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on its own port and directory, with AOF (every write fsynced)."""

    def __init__(self, directory: Path, port: int | None = None):
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
            "--maxmemory-policy", "noeviction", "--logfile", str(self.log),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 20, interval=0.05, what=f"redis on port {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save (AOF with fsync always keeps every write)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, socket_connect_timeout=2)


# -- worker subprocesses ------------------------------------------------------------------------


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait(timeout=20)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class FarmEnv:
    """The farm's environment for one test (see the module docstring)."""

    tmp: Path
    database_url: str
    broker_url: str
    overrides: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProc] = field(default_factory=list)
    _ledger: Ledger | None = None
    _seq: int = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env.update(
            FARM_DATABASE_URL=self.database_url,
            FARM_BROKER_URL=self.broker_url,
            FARM_DATA_DIR=str(self.tmp / "data"),
            FARM_OUTPUT_DIR=str(self.tmp / "outputs"),
            FARM_FAULT_INJECTION="1",
            FARM_TORCH_THREADS="1",
            FARM_LEASE_S="10",
            FARM_HEARTBEAT_S="1",
            FARM_REAP_INTERVAL_S="1",
            FARM_RETRY_BASE_S="0.2",
            FARM_RETRY_CAP_S="2",
            FARM_PHASE_BATCH="1",
            FARM_LOG_LEVEL="INFO",
            PYTHONHASHSEED="0",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.overrides)
        env.update(extra)
        return env

    def settings(self) -> Settings:
        env = self.env()
        fields = {k.removeprefix("FARM_").lower(): v for k, v in env.items() if k.startswith("FARM_")}
        return Settings(**fields)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.database_url)
        return self._ledger

    # -- workers -----------------------------------------------------------------------------
    def start_worker(self, name: str | None = None, *args: str, wait: bool = True, **extra: str) -> WorkerProc:
        """``farm worker --device cpu --hostname NAME@farmtest`` with its log in a file."""
        self._seq += 1
        name = name or f"w{self._seq}"
        node = f"{name}@farmtest"
        argv = [FARM, "worker", "--device", "cpu", "--hostname", node, "--stop-timeout", "5", *args]
        return self.spawn(node, argv, wait=wait, **extra)

    def start_supervisor(self, devices: str = "cpu", *, wait: bool = True, **extra: str) -> WorkerProc:
        """``farm worker --devices DEVICES``: the supervisor and its children share one log."""
        self._seq += 1
        return self.spawn(f"supervisor-{self._seq}", [FARM, "worker", "--devices", devices, "--stop-timeout", "5"],
                           wait=wait, **extra)

    def spawn(self, name: str, argv: list[str], *, wait: bool, **extra: str) -> WorkerProc:
        log = self.tmp / f"{name.partition('@')[0]}-{self._seq}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=self.env(**extra), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        worker = WorkerProc(name, proc, log)
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: WorkerProc, timeout: float = WORKER_READY_S) -> None:
        def ready() -> bool:
            if not worker.alive():
                raise AssertionError(f"worker {worker.name} exited with {worker.proc.returncode}:\n{worker.text()}")
            return " ready." in worker.text()

        wait_until(ready, timeout, interval=0.2, what=f"worker {worker.name} ready")

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.alive():
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.pid, signal.SIGKILL)  # children of a supervisor, if any are left

    def logs(self) -> str:
        parts = []
        for worker in self.workers:
            parts.append(f"===== {worker.name} (pid {worker.pid}, exit {worker.proc.poll()}) {worker.log.name}\n")
            parts.append(worker.text()[-20000:])
        return "".join(parts)

    # -- jobs --------------------------------------------------------------------------------
    def new_jobs(self, count: int, *, prefix: str = "job", priority: str = "batch",
                 tags: Sequence[dict[str, str] | None] | None = None, seed0: int = 0,
                 batch_index: bool = False, **spec: Any) -> list[NewJob]:
        settings = self.settings()
        jobs = []
        for i in range(count):
            data = {"prompt": f"{prefix} {i}", "seed": seed0 + i, "priority": priority, **SMALL, **spec}
            if tags is not None and tags[i]:
                data["tags"] = dict(tags[i] or {})
            jobs.append(NewJob.from_spec(parse_spec(data), max_attempts=settings.max_attempts,
                                         batch_index=i if batch_index else None))
        return jobs

    def submit(self, jobs: Sequence[NewJob], *, send: bool = True) -> list[str]:
        """Add ``jobs`` to the ledger, then send their messages (enqueue after commit)."""
        ids = self.ledger.add_jobs(list(jobs))
        if send:
            self.send(ids)
        return ids

    def send(self, ids: Sequence[str]) -> int:
        settings = self.settings()
        pending = self.ledger.jobs_to_enqueue(job_ids=list(ids))
        return enqueue_jobs(self.ledger, pending, app=make_app(settings), settings=settings)

    def jobs(self, ids: Sequence[str]) -> list[JobRecord]:
        return [self.ledger.get_job(i) for i in ids]

    def wait_terminal(self, ids: Sequence[str], timeout: float) -> list[JobRecord]:
        def done() -> list[JobRecord] | None:
            jobs = self.jobs(ids)
            return jobs if all(j.terminal for j in jobs) else None

        try:
            return wait_until(done, timeout, interval=0.5, what=f"{len(ids)} jobs to finish")
        except AssertionError:
            states: dict[str, int] = {}
            for j in self.jobs(ids):
                states[j.status.value] = states.get(j.status.value, 0) + 1
            raise AssertionError(f"jobs not finished after {timeout:.0f} s: {states}") from None

    def close(self) -> None:
        self.stop_all()
        if self._ledger is not None:
            self._ledger.close()




def assert_exactly_once(env: FarmEnv, ids: Sequence[str]) -> list[JobRecord]:
    """Every job succeeded exactly once.

    One succeeded event each, an output on disk whose hash the ledger records, and no other job's
    output.
    """
    jobs = env.jobs(ids)
    bad = [(j.id, j.status.value, j.error_type, j.error_message) for j in jobs if j.status.value != "succeeded"]
    assert not bad, f"jobs not succeeded: {bad}"
    for job in jobs:
        kinds = [e.kind for e in env.ledger.events(job.id)]
        assert kinds.count("succeeded") + kinds.count("cache-hit") == 1, (job.id, kinds)
        assert job.output_uri and job.output_uri.startswith("file://")
        assert Path(job.output_uri.removeprefix("file://")).is_file()
    uris = [j.output_uri for j in jobs]
    assert len(set(uris)) == len(uris), "two jobs share an output"
    return jobs


def claimed_count(env: FarmEnv, job_id: str) -> int:
    return sum(1 for e in env.ledger.events(job_id) if e.kind == "claimed")
