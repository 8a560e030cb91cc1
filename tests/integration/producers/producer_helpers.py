"""Helpers of the producer tests (imported as ``producer_helpers``).

A private redis-server, a view of the farm's queues in it (decoding the Celery messages), a
stand-in worker, manifest writing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import api_helpers
from private_redis import PrivateRedis, decode_job_id

from farm.ledger import Ledger
from farm.queue.names import QUEUE_BATCH, QUEUE_INTERACTIVE, all_queues
from farm.settings import Settings

FARM = str(Path(sys.executable).with_name("farm"))
#: The two classes (queue-name prefixes); each holds one queue per model (``farm.batch.tiny``).
QUEUES = (QUEUE_INTERACTIVE, QUEUE_BATCH)


def queues_of(name: str) -> list[str]:
    """The queues a class prefix (``farm.batch``) stands for, or the one queue named."""
    return [q for q in all_queues() if q.startswith(name + ".")] if name in QUEUES else [name]
class Broker:
    """The test's view of the private Redis."""

    def __init__(self, server: PrivateRedis) -> None:
        self.url = server.url
        self.redis = server.client

    def clear(self) -> None:
        self.redis.delete(*all_queues())

    def lengths(self) -> dict[str, int]:
        """Messages waiting per class (over every model's queue of the class)."""
        return {c: sum(int(self.redis.llen(q)) for q in queues_of(c)) for c in QUEUES}

    def total(self) -> int:
        return sum(self.lengths().values())

    def job_ids(self, queue: str) -> list[str]:
        """Waiting messages' job ids of a queue or a class, oldest first per queue (kombu LPUSHes, consumers BRPOP)."""
        return [decode_job_id(raw) for q in queues_of(queue) for raw in reversed(self.redis.lrange(q, 0, -1))]

    def all_job_ids(self) -> list[str]:
        return [j for q in QUEUES for j in self.job_ids(q)]

    def take(self) -> list[str]:
        """Pop every waiting message (interactive first), as workers would."""
        out: list[str] = []
        for queue in (q for c in QUEUES for q in queues_of(c)):
            while (raw := self.redis.rpop(queue)) is not None:
                out.append(decode_job_id(raw))
        return out


#: ``work()``: pop every waiting message and render those jobs; the runner outcomes.
Work = Callable[[], list[Any]]
#: ``run_farm(*args, timeout=..., **env)``: the farm console script on the test's services.
RunFarm = Callable[..., subprocess.CompletedProcess[str]]


def run_jobs(ledger: Ledger, settings: Settings, engine: Any, job_ids: list[str]) -> list[Any]:
    """Run ``job_ids`` through the real runner (claim, render, store, record) on the tiny model.

    Also register the model's weights fingerprint, as a worker does.
    """
    from farm.store.writer import OutputWriter
    from farm.worker.runner import JobRunner

    if not job_ids:
        return []
    runner = JobRunner(
        ledger=ledger, engine=engine, store=OutputWriter(settings.outputs_path),
        worker_host="test-cpu@here", worker_device="cpu", lease_s=60, heartbeat_s=5,
    )
    outcomes = runner.run(job_ids)
    for outcome in outcomes:
        record = ledger.get_job(outcome.job_id)
        if record.weights_fingerprint:
            ledger.register_model(record.model_name, record.weights_fingerprint, worker="test-runner")
    return outcomes


def write_manifest(path: Path, items: list[dict[str, Any]], **top: Any) -> Path:
    """A JSONL manifest: an optional header line, then one item per line."""
    lines = [json.dumps(top)] if top else []
    lines.extend(json.dumps(item) for item in items)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def count_rows(database_url: str, table: str) -> int:
    """Rows in a ledger table, read with plain SQL (not through the code under test)."""
    return api_helpers.count_rows(database_url, table)


def execute_sql(database_url: str, statement: str, **params: Any) -> None:
    """A test-only write (e.g. simulating another environment in a recorded job)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()
