"""The bare-Celery baseline of ``bench/overhead.py``.

One trivial task on a Redis broker with a Redis result backend, JSON only — a ``delay().get()``
round trip with nothing of farm in it.

Run as a worker by the benchmark: ``celery -A celery_echo worker --pool solo`` (cwd ``bench/``),
with ``BENCH_BROKER_URL`` and ``BENCH_RESULT_URL`` set.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/15"),
             backend=os.environ.get("BENCH_RESULT_URL", "redis://127.0.0.1:6379/14"))
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_prefetch_multiplier=1, task_acks_late=True, broker_connection_retry_on_startup=True)


@app.task(name="bench.echo")
def echo(value: int) -> int:
    """Return the argument: the round trip is all there is."""
    return value
