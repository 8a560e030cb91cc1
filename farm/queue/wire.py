"""Writing ``farm.render`` messages straight into Redis, in pipelines.

Each message is the one Celery itself would send — built by Celery's own
``app.amqp.as_task_v2`` (protocol 2: headers, properties, body) — wrapped in kombu's Redis
envelope (JSON, base64 body, ``delivery_info`` and a ``delivery_tag``) and ``LPUSH``-ed onto the
queue's list, many per round trip. What this skips is the per-message cost of Celery's producer
path (routing lookups, signals, the ``task-sent`` event): a worker consumes these messages exactly
like kombu's (a test compares the two field by field, and every worker test consumes them). Flower
sees such a task from the moment a worker receives it.

Used for ``redis://`` and ``rediss://`` brokers; any other broker (the embedded filesystem one,
Sentinel) goes through kombu (:mod:`farm.queue.enqueue`). Redis connections come from one pool per
broker URL and process; redis-py's own reconnect retries are off (the caller's backoff and its
send budget decide how long to try).
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from farm.queue.names import TASK_RENDER, queue_for

if TYPE_CHECKING:
    import redis
    from celery import Celery

#: URL schemes this module publishes to.
SCHEMES: tuple[str, ...] = ("redis", "rediss")
#: The envelope kombu's Redis transport stores (content type and encoding of a JSON body).
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
BODY_ENCODING = "base64"
#: kombu's "persistent" delivery mode.
DELIVERY_MODE = 2
#: Messages per pipeline round trip.
PIPELINE_SIZE = 1000

_clients: dict[tuple[str, float, float], redis.Redis] = {}
_templates: dict[tuple[int, str], dict[str, Any]] = {}
_lock = threading.Lock()


def supports(url: str) -> bool:
    """True when ``url`` is a Redis URL (the direct path can send through it)."""
    return urlsplit(url).scheme in SCHEMES


def client_for(url: str, *, connect_timeout_s: float, socket_timeout_s: float) -> redis.Redis:
    """The process's Redis client for a broker URL (one connection pool per URL and timeouts)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    key = (url, connect_timeout_s, socket_timeout_s)
    with _lock:
        found = _clients.get(key)
        if found is None:
            found = _clients[key] = redis.Redis.from_url(
                url, socket_connect_timeout=connect_timeout_s, socket_timeout=socket_timeout_s,
                socket_keepalive=True, retry=Retry(NoBackoff(), 0), retry_on_error=[],
            )
        return found


def message(app: Celery, job_id: str, queue: str, *, origin: str) -> bytes:
    """One ``farm.render`` message for ``job_id`` as kombu's Redis transport stores it (JSON)."""
    return orjson.dumps(_envelope(_template(app, origin), job_id, queue))


def _template(app: Celery, origin: str) -> dict[str, Any]:
    """The parts of a message that are the same for every job, as Celery builds them (cached per app and origin).

    Headers, properties and the body's embed.
    """
    key = (id(app), origin)
    found = _templates.get(key)
    if found is None:
        probe = str(uuid.uuid4())
        built = app.amqp.as_task_v2(probe, TASK_RENDER, args=[probe], ignore_result=True, origin=origin,
                                    reply_to=app.thread_oid, argsrepr=repr([probe]), kwargsrepr="{}")
        args, kwargs, embed = built.body
        if list(args) != [probe] or kwargs != {}:
            raise RuntimeError(f"unexpected Celery message body {built.body!r}: the wire format changed")
        found = _templates[key] = {"headers": dict(built.headers), "properties": dict(built.properties),
                                   "embed": dict(embed)}
    return found


def _envelope(template: dict[str, Any], job_id: str, queue: str) -> dict[str, Any]:
    task_id = str(uuid.uuid4())
    headers = {**template["headers"], "id": task_id, "root_id": task_id, "argsrepr": repr([job_id])}
    body = orjson.dumps([[job_id], {}, template["embed"]])
    properties: dict[str, Any] = {
        **template["properties"],
        "correlation_id": task_id,
        "delivery_mode": DELIVERY_MODE,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": BODY_ENCODING,
        "delivery_tag": str(uuid.uuid4()),
    }
    return {"body": base64.b64encode(body).decode("ascii"),
            "content-encoding": CONTENT_ENCODING, "content-type": CONTENT_TYPE, "headers": headers,
            "properties": properties}


def origin_name() -> str:
    """What Celery puts in a message's ``origin`` header for a producer process."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def publish(app: Celery, client: redis.Redis, jobs: Sequence[tuple[str, str]]) -> None:
    """``LPUSH`` one message per ``(job_id, route)`` onto the route's queue.

    In pipelines of :data:`PIPELINE_SIZE`. Raises redis-py's errors (the caller retries the whole
    call: a message sent twice is harmless, the claim drops the second).
    """
    origin = origin_name()
    for start in range(0, len(jobs), PIPELINE_SIZE):
        pipe = client.pipeline(transaction=False)
        for job_id, route in jobs[start : start + PIPELINE_SIZE]:
            queue = queue_for(route)
            pipe.lpush(queue, message(app, job_id, queue, origin=origin))
        pipe.execute()


def queue_lengths(client: redis.Redis, queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting in each queue (not counting those a worker holds unacknowledged)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
    return {queue: int(n) for queue, n in zip(queues, pipe.execute(), strict=True)}
