"""A producer SIGKILLed in the middle of ``farm batch`` loses nothing and duplicates nothing.

The real console script runs a manifest of a few thousand jobs; the test watches the ledger (plain
SQL) and kills the process (1) after the ledger commit, while it is sending the messages, and
(2) before the commit. Running ``farm batch`` again on the same manifest must give the same batch,
no duplicate jobs, and every job sent at least once — twice only for the few sent in the moment
of the kill but not yet marked (harmless: a worker claims a job once and drops the other message).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from producer_helpers import FARM, Broker, RunFarm, write_manifest
from sqlalchemy import create_engine, text

from farm.client.core import SEND_CHUNK
from farm.ledger import Ledger

pytestmark = pytest.mark.slow

POLL_S = 0.01


def manifest(tmp_path: Path, jobs: int) -> Path:
    per_item = 50
    items = [{"prompt": f"frame study {i}", "seeds": list(range(i * per_item, (i + 1) * per_item))}
             for i in range(jobs // per_item)]
    return write_manifest(tmp_path / "big.jsonl", items, name=f"big-{jobs}")


class LedgerWatch:
    """Reads the batch row and the enqueue marks with plain SQL while the producer runs."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)

    def batch_id(self) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT id FROM batches")).scalar_one_or_none()

    def enqueued(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM jobs WHERE enqueued_at IS NOT NULL")).scalar_one())

    def jobs(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM jobs")).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


def start_batch(path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([FARM, "batch", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def wait_until(predicate: Callable[[], bool], proc: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"farm batch exited ({proc.returncode}) before the kill point: {err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("kill point not reached in time")
        time.sleep(POLL_S)


def test_killed_while_sending_then_resubmitted(
    tmp_path: Path, farm_env: dict[str, str], pg_url: str, broker: Broker, run_farm: RunFarm
) -> None:
    total = 4000
    path = manifest(tmp_path, total)
    watch = LedgerWatch(pg_url)
    try:
        proc = start_batch(path, farm_env)
        wait_until(lambda: watch.batch_id() is not None and watch.enqueued() > 0, proc)
        kill(proc)
        batch_id = watch.batch_id()
        marked_at_kill = watch.enqueued()
        assert watch.jobs() == total  # the commit is all or nothing
        assert 0 < marked_at_kill < total, "the kill came after the last send: not mid-enqueue"
        time.sleep(0.2)  # let Redis apply what the killed process had already written to its socket
        messages_at_kill = broker.total()
        assert marked_at_kill <= messages_at_kill <= marked_at_kill + SEND_CHUNK

        again = run_farm("batch", str(path), "--json", timeout=300)
        assert again.returncode == 0, again.stderr
        assert f'"batch_id": "{batch_id}"' in again.stdout and '"created": false' in again.stdout
        assert watch.jobs() == total and watch.enqueued() == total
    finally:
        watch.close()
    with Ledger(pg_url) as ledger:
        ids = [j.id for j in ledger.batch_jobs(str(batch_id))]
    sent = Counter(broker.all_job_ids())
    assert set(sent) == set(ids)  # every job sent ...
    twice = [j for j, n in sent.items() if n > 1]
    assert max(sent.values()) <= 2 and len(twice) <= SEND_CHUNK  # ... once, or twice in the kill's chunk
    assert len(twice) == messages_at_kill - marked_at_kill


def test_killed_before_the_commit_leaves_nothing(
    tmp_path: Path, farm_env: dict[str, str], pg_url: str, broker: Broker, run_farm: RunFarm
) -> None:
    total = 8000
    path = manifest(tmp_path, total)
    watch = LedgerWatch(pg_url)
    try:
        proc = start_batch(path, farm_env)
        time.sleep(1.0)  # started, still expanding / writing (the commit comes seconds later)
        kill(proc)
        assert watch.batch_id() is None, "the commit came before the kill: not a pre-commit kill"
        assert watch.jobs() == 0 and broker.total() == 0
        again = run_farm("batch", str(path), timeout=300)
        assert again.returncode == 0, again.stderr
        assert watch.jobs() == total and watch.enqueued() == total
    finally:
        watch.close()
    sent = Counter(broker.all_job_ids())
    assert len(sent) == total and set(sent.values()) == {1}
