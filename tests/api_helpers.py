"""Helpers of the HTTP API tests, integration and acceptance (imported as ``api_helpers``).

Queue views of the private redis-server (``private_redis``), decoding the Celery messages waiting in
it, and counting ledger rows with plain SQL.
"""

from __future__ import annotations

from private_redis import PrivateRedis, decode_job_id

from farm.queue.names import QUEUE_BATCH, QUEUE_INTERACTIVE, all_queues

#: The two classes (queue-name prefixes); each holds one queue per model (``farm.batch.tiny``).
QUEUES = (QUEUE_INTERACTIVE, QUEUE_BATCH)


def queues_of(name: str) -> list[str]:
    """The queues a class prefix (``farm.batch``) stands for, or the one queue named."""
    return [q for q in all_queues() if q.startswith(name + ".")] if name in QUEUES else [name]
#: A token long enough for the API's rule (16+ characters); never a real secret.
TOKEN = "test-token-" + "0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def queue_lengths(server: PrivateRedis) -> dict[str, int]:
    """Messages waiting in each class of the farm's queues (over every model's queue)."""
    return {c: sum(int(server.client.llen(q)) for q in queues_of(c)) for c in QUEUES}


def queued_job_ids(server: PrivateRedis, queue: str) -> list[str]:
    """Job ids of the messages waiting in ``queue`` (or every queue of a class), oldest first per queue."""
    return [decode_job_id(raw) for q in queues_of(queue) for raw in reversed(server.client.lrange(q, 0, -1))]


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
