"""The producer path's costs and guarantees.

One submit is one ledger transaction and one message; a message that could not be sent is
un-marked (the reaper sends it); a producer that died between its commit and its send is caught by
the reaper once the queue is empty; and ``wait`` is told (Postgres ``LISTEN``/``NOTIFY``) instead
of polling.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ledger_helpers import statements
from producer_helpers import Broker
from sqlalchemy import event

from farm.client import Client
from farm.ledger import Ledger, NewJob
from farm.queue.enqueue import reap
from farm.settings import Settings
from farm.spec import parse_spec


@contextmanager
def counting_transactions(ledger: Ledger) -> Iterator[list[str]]:
    """Every transaction begun on the ledger's engine while the block runs."""
    begun: list[str] = []

    def on_begin(conn: Any) -> None:
        begun.append("begin")

    engine = ledger._engine  # the gateway's own engine: what the code under test uses
    event.listen(engine, "begin", on_begin)
    try:
        yield begun
    finally:
        event.remove(engine, "begin", on_begin)


def succeed(ledger: Ledger, job_id: str) -> None:
    assert ledger.claim(job_id, worker_host="w@h", worker_device="cpu", lease_s=60) is not None
    ledger.record_success(job_id, output_uri=f"file:///o/ab/{job_id}/video.mp4", file_sha256="f" * 64,
                          frames_sha256="e" * 64, effective_params={}, weights_fingerprint="wf",
                          env_fingerprint={}, timings={}, worker_host="w@h")


def test_one_submit_is_one_transaction_and_one_message(client: Client, ledger: Ledger, broker: Broker) -> None:
    client.submit("warm-up: imports and connections", seed=1)
    broker.clear()
    with counting_transactions(ledger) as begun:
        sub = client.submit_detailed("a red fox running through snow", seed=7, steps=4)
    assert len(begun) == 1, begun  # insert + dedup + marked sent, committed once; no read-back
    assert broker.all_job_ids() == sub.job_ids and sub.enqueued == 1
    assert (sub.first_status, sub.cache_of, sub.seeds) == ("queued", None, [7])
    job = ledger.get_job(sub.job_ids[0])
    assert job.enqueued_at is not None and job.status.value == "queued"


def test_an_unsent_message_is_unmarked_for_the_reaper(ledger: Ledger, settings: Settings, tmp_path: Path) -> None:
    from private_redis import free_port

    dead = Settings(**{**settings.model_dump(), "broker_url": f"redis://127.0.0.1:{free_port()}/0",
                       "send_timeout_s": 0.5})
    with Client(ledger, dead) as client:
        sub = client.submit_detailed("a kite over dunes", seed=3)
    assert sub.not_sent == 1 and sub.enqueued == 0
    assert ledger.get_job(sub.job_ids[0]).enqueued_at is None  # the reaper's "never sent"
    assert ledger.jobs_to_enqueue() == [(sub.job_ids[0], "interactive.tiny")]


def test_the_reaper_resends_a_message_lost_between_commit_and_send(
    ledger: Ledger, settings: Settings, broker: Broker
) -> None:
    """A producer that died right after its commit: the job is marked sent but no message exists.

    While its queue still holds messages the job may be behind them; once the queue is empty and
    the grace has passed, the reaper sends it.
    """
    spec = parse_spec({"prompt": "a lost message", "seed": 11, "priority": "batch"})
    admitted = ledger.admit([NewJob.from_spec(spec)], mark_sent=True)  # ... and the producer died here
    [job_id] = admitted.job_ids
    quick = Settings(**{**settings.model_dump(), "lost_message_grace_s": 0.2})
    time.sleep(0.3)
    broker.redis.lpush("farm.batch.tiny", b"another message, still waiting")
    assert reap(ledger, quick).enqueued == []  # the queue is not empty: the job may be behind it
    broker.clear()
    report = reap(ledger, quick)
    assert report.enqueued == [job_id] and broker.all_job_ids() == [job_id]


def test_wait_is_told_when_the_job_finishes(client: Client, ledger: Ledger) -> None:
    [job_id] = client.submit("a lighthouse at dusk", seed=5)
    finished_at: list[float] = []

    def finish_later() -> None:
        time.sleep(1.5)
        succeed(ledger, job_id)
        finished_at.append(time.monotonic())

    worker = threading.Thread(target=finish_later)
    worker.start()
    reads = client.status_reads
    report = client.wait(job_id, timeout_s=30, poll_s=10.0)
    returned = time.monotonic()
    worker.join()
    assert report.all_succeeded
    assert returned - finished_at[0] < 0.5  # told at the commit, not at the next poll (10 s apart)
    # one read before; the announcement carries the final status: no read after it
    assert client.status_reads - reads == 1
    assert report == client.status(job_id)  # the same report a read gives


def test_wait_is_told_how_a_job_ended(client: Client, ledger: Ledger) -> None:
    [job_id] = client.submit("a lighthouse in fog", seed=6)

    def fail_later() -> None:
        time.sleep(0.5)
        assert ledger.claim(job_id, worker_host="w@h", worker_device="cpu", lease_s=60) is not None
        ledger.record_failure(job_id, error_type="ValueError", error_message="bad", retry=False, worker_host="w@h")

    worker = threading.Thread(target=fail_later)
    worker.start()
    reads = client.status_reads
    report = client.wait(job_id, timeout_s=30, poll_s=10.0)
    worker.join()
    assert report.counts["failed"] == 1 and report.finished and not report.all_succeeded
    assert client.status_reads - reads == 1 and report == client.status(job_id)


def listening_backends(ledger: Ledger) -> int:
    """How many server connections LISTEN on the done channel right now (any client)."""
    import psycopg

    from farm.ledger import db
    from farm.ledger.queueing import DONE_CHANNEL

    with psycopg.connect(db.libpq_url(ledger.url), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND query = %s", (f"LISTEN {DONE_CHANNEL}",)).fetchone()
        return int(row[0]) if row else 0


def test_waits_share_one_listening_connection_that_is_quiet_between_waits(client: Client, ledger: Ledger) -> None:
    listeners = []
    for seed in (11, 12, 13):
        [job_id] = client.submit("a kite over dunes", seed=seed)
        succeed(ledger, job_id)
        reads = client.status_reads
        with statements(ledger) as ran:
            assert client.wait(job_id, timeout_s=10).all_succeeded
        # a job this client submitted: its kind is known, it is finished at the first (narrow) read
        assert client.status_reads - reads == 1 and ran == ["SELECT jobs.status,"]
        listeners.append(ledger._idle_listener)
    assert listeners[0] is not None and all(one is listeners[0] for one in listeners)  # one connection, kept
    # between waits it last ran UNLISTEN: the server queues no announcement for it
    assert listening_backends(ledger) == 0
    ledger.close()
    assert ledger._idle_listener is None


def test_wait_on_sqlite_polls_with_backoff(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with Client(settings=settings) as client:
        [job_id] = client.submit("a paper boat", seed=2)
        started = time.monotonic()
        report = client.wait(job_id, timeout_s=2.0, poll_s=1.0)
        assert report.timed_out and time.monotonic() - started >= 2.0
        # reads at 0, 0.25, 0.75, 1.75 s (pauses doubling from 0.25 s, capped at 1 s), then the timeout's
        assert client.status_reads <= 5
