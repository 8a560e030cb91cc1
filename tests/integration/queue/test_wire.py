"""The messages farm writes straight into Redis are the messages Celery would send.

Same envelope, headers, properties and body (but for the per-message ids), on the same list —
and a Celery worker runs them (every worker test sends through this path).
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from private_redis import PrivateRedis

from farm.queue import wire
from farm.queue.app import make_app
from farm.queue.names import TASK_RENDER, queue_for
from farm.settings import Settings

#: Fields that are fresh for every message (ids).
PER_MESSAGE_HEADERS = {"id", "root_id"}
PER_MESSAGE_PROPERTIES = {"correlation_id", "delivery_tag"}


TINY_BATCH = queue_for("batch.tiny")
TINY_INTERACTIVE = queue_for("interactive.tiny")
DENSE_BATCH = queue_for("batch.tiny-dense")


@pytest.fixture
def server(tmp_path: Path) -> Any:
    s = PrivateRedis(tmp_path)
    yield s
    s.stop()


def decoded(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def test_a_wire_message_equals_celerys_own(server: PrivateRedis, tmp_path: Path) -> None:
    app = make_app(Settings(broker_url=server.url, data_dir=tmp_path))
    job_id = str(uuid.uuid4())
    with app.connection_for_write(transport_options={"retry_on_timeout": False}) as conn:
        app.send_task(TASK_RENDER, args=[job_id], queue=TINY_BATCH, producer=app.amqp.Producer(conn),
                      ignore_result=True, retry=False)
    [celerys] = server.client.lrange(TINY_BATCH, 0, -1)
    server.client.delete(TINY_BATCH)
    client = wire.client_for(server.url, connect_timeout_s=2, socket_timeout_s=5)
    wire.publish(app, client, [(job_id, "batch.tiny")])
    [ours] = server.client.lrange(TINY_BATCH, 0, -1)
    a, b = decoded(celerys), decoded(ours)
    assert a["body"] == b["body"] == [[job_id], {}, {"callbacks": None, "errbacks": None, "chain": None,
                                                     "chord": None}]
    assert {k: v for k, v in a.items() if k not in ("headers", "properties", "body")} == {
        k: v for k, v in b.items() if k not in ("headers", "properties", "body")}
    strip = lambda d, keys: {k: v for k, v in d.items() if k not in keys}  # noqa: E731
    assert strip(a["headers"], PER_MESSAGE_HEADERS) == strip(b["headers"], PER_MESSAGE_HEADERS)
    assert strip(a["properties"], PER_MESSAGE_PROPERTIES) == strip(b["properties"], PER_MESSAGE_PROPERTIES)
    assert b["headers"]["id"] == b["headers"]["root_id"] == b["properties"]["correlation_id"]
    assert b["headers"]["id"] != b["properties"]["delivery_tag"]


def test_publish_goes_to_the_route_queue_in_order(server: PrivateRedis, tmp_path: Path) -> None:
    """Each message lands in its route's queue (class and model), in publish order."""
    app = make_app(Settings(broker_url=server.url, data_dir=tmp_path))
    client = wire.client_for(server.url, connect_timeout_s=2, socket_timeout_s=5)
    routes = ("batch.tiny", "interactive.tiny", "batch.tiny-dense")
    jobs = [(str(uuid.uuid4()), routes[i % 3]) for i in range(2 * wire.PIPELINE_SIZE + 5)]
    wire.publish(app, client, jobs)
    lengths = wire.queue_lengths(client, [TINY_INTERACTIVE, TINY_BATCH, DENSE_BATCH])
    assert lengths == {queue_for(r): sum(route == r for _, route in jobs) for r in routes}
    # consumers pop from the right end: the first published comes out first
    for route in routes:
        first = next(j for j, r in jobs if r == route)
        assert decoded(server.client.rpop(queue_for(route)))["body"][0] == [first]
    assert decoded(server.client.rpop(DENSE_BATCH))["properties"]["delivery_info"]["routing_key"] == DENSE_BATCH


def test_a_dead_broker_fails_fast(tmp_path: Path) -> None:
    """redis-py's own reconnect retries are off.

    A refused connection is an error at once (the caller's backoff and send budget decide how
    long to keep trying).
    """
    import time

    import redis
    from private_redis import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    app = make_app(Settings(broker_url=url, data_dir=tmp_path))
    client = wire.client_for(url, connect_timeout_s=2, socket_timeout_s=5)
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        wire.publish(app, client, [(str(uuid.uuid4()), "batch.tiny")])
    assert time.monotonic() - started < 1.0
