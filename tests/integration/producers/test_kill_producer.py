"""A producer SIGKILLed in the middle of ``farm batch`` loses nothing and duplicates nothing.

The real console script runs a manifest of many thousand jobs; the test watches the ledger (plain
SQL) and the broker, and kills the process (1) after the ledger commit, while it is sending the
messages, and (2) before the commit. The batch's ``sent_through`` (confirmed after every chunk of
messages) says how far sending got. Running ``farm batch`` again on the same manifest — or one
``farm reap`` — must give the same batch, no duplicate jobs, and every job sent at least once:
twice only for those of the chunk in flight at the kill (harmless: a worker claims a job once and
drops the other message).
"""

from __future__ import annotations

import json
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

    def sent_through(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT sent_through FROM batches")).scalar_one())

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


def kill_while_sending(path: Path, env: dict[str, str], watch: LedgerWatch, broker: Broker,
                       total: int) -> tuple[str, int, int]:
    """Start ``farm batch`` and SIGKILL it once messages flow: (batch id, sent_through, messages)."""
    proc = start_batch(path, env)
    wait_until(lambda: watch.batch_id() is not None and broker.total() > 0, proc)
    kill(proc)
    batch_id = str(watch.batch_id())
    assert watch.jobs() == total  # the commit is all or nothing
    through = watch.sent_through()
    time.sleep(0.2)  # let Redis apply what the killed process had already written to its socket
    messages = broker.total()
    assert through < total - 1, "the kill came after the last send: not mid-enqueue"
    assert through + 1 <= messages <= through + 1 + SEND_CHUNK  # confirmed ones all sent, at most a chunk more
    return batch_id, through, messages


def check_sent(pg_url: str, batch_id: str, broker: Broker, through: int, messages_at_kill: int) -> None:
    with Ledger(pg_url) as ledger:
        ids = [j.id for j in ledger.batch_jobs(batch_id)]
        assert ledger.get_batch(batch_id).sent_through == len(ids) - 1
    sent = Counter(broker.all_job_ids())
    assert set(sent) == set(ids)  # every job sent ...
    twice = [j for j, n in sent.items() if n > 1]
    assert max(sent.values()) <= 2 and len(twice) <= SEND_CHUNK  # ... once, or twice in the kill's chunk
    assert len(twice) == messages_at_kill - (through + 1)


def test_killed_while_sending_then_resubmitted(
    tmp_path: Path, farm_env: dict[str, str], pg_url: str, broker: Broker, run_farm: RunFarm
) -> None:
    total = 20_000
    path = manifest(tmp_path, total)
    watch = LedgerWatch(pg_url)
    try:
        batch_id, through, messages_at_kill = kill_while_sending(path, farm_env, watch, broker, total)
        again = run_farm("batch", str(path), "--json", timeout=300)
        assert again.returncode == 0, again.stderr
        assert f'"batch_id": "{batch_id}"' in again.stdout and '"created": false' in again.stdout
        assert f'"enqueued": {total - 1 - through}' in again.stdout  # exactly the unconfirmed tail
        assert watch.jobs() == total and watch.enqueued() == total
    finally:
        watch.close()
    check_sent(pg_url, batch_id, broker, through, messages_at_kill)


def test_killed_while_sending_then_reaped(
    tmp_path: Path, farm_env: dict[str, str], pg_url: str, broker: Broker, run_farm: RunFarm
) -> None:
    """Nobody submits again.

    One ``farm reap`` finds the batch whose sending stalled and sends the rest (a worker's reaper
    does the same after FARM_LOST_MESSAGE_GRACE_S).
    """
    total = 20_000
    path = manifest(tmp_path, total)
    watch = LedgerWatch(pg_url)
    try:
        batch_id, through, messages_at_kill = kill_while_sending(path, farm_env, watch, broker, total)
        reaped = run_farm("reap", "--json", timeout=300)
        assert reaped.returncode == 0, reaped.stderr
        report = json.loads(reaped.stdout)
        assert report["batches"] == [batch_id] and len(report["enqueued"]) == total - 1 - through
    finally:
        watch.close()
    check_sent(pg_url, batch_id, broker, through, messages_at_kill)


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
