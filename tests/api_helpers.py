"""Helpers of the HTTP API tests, integration and acceptance (imported as ``api_helpers``).

Queue views of the private redis-server (``private_redis``), decoding the Celery messages waiting in
it, and counting ledger rows with plain SQL.
"""

from __future__ import annotations

from private_redis import PrivateRedis, decode_job_id

from farm.queue.names import QUEUE_BATCH, QUEUE_INTERACTIVE

QUEUES = (QUEUE_INTERACTIVE, QUEUE_BATCH)
#: A token long enough for the API's rule (16+ characters); never a real secret.
TOKEN = "test-token-" + "0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def queue_lengths(server: PrivateRedis) -> dict[str, int]:
    """Messages waiting in each of the farm's queues."""
    return {q: int(server.client.llen(q)) for q in QUEUES}


def queued_job_ids(server: PrivateRedis, queue: str) -> list[str]:
    """Job ids of the messages waiting in ``queue``, oldest first."""
    return [decode_job_id(raw) for raw in reversed(server.client.lrange(queue, 0, -1))]


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
