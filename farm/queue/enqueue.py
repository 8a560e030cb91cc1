"""Sending wake-up messages for jobs already committed in the ledger, and the reaper's pass.

* :func:`enqueue_jobs` — one ``farm.render`` message per ``(job_id, route)`` to the route's queue
  (class x model, :mod:`farm.queue.names`), then ``ledger.mark_enqueued``. Broker errors are
  transient: retried with exponential backoff, jitter and a cap; if the broker stays away
  :class:`~farm.errors.BrokerUnavailable` is raised, the jobs not sent keep ``enqueued_at`` NULL
  and the reaper sends them later. Nothing the ledger accepted is lost.
* :func:`reap` — one reaper pass: expired leases back to queued (or failed at the attempt cap),
  then every queued job whose message was never sent, was lost, or is stale is sent again.
  Duplicates are harmless: a message for a job that is not claimable is dropped by the worker.
* :func:`retrying` — the one retry policy (tenacity) for transient errors, shared by the worker.

Torch-free; never imports the task module (messages are sent by task name).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from kombu.exceptions import KombuError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    stop_before_delay,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base

from farm.errors import BrokerUnavailable, TransientError
from farm.ledger.types import utcnow
from farm.queue import wire
from farm.queue.app import BROKER_CONNECT_TIMEOUT_S, BROKER_SOCKET_TIMEOUT_S, get_app
from farm.queue.names import TASK_RENDER, all_routes, queue_for
from farm.settings import Settings, get_settings, redacted_url

if TYPE_CHECKING:
    from celery import Celery

    from farm.ledger import Ledger

log = logging.getLogger(__name__)


#: Messages sent per Redis pipeline (also the unit of re-sending after a broker error).
SEND_CHUNK = 500
#: Port of a redis:// URL that names none.
DEFAULT_REDIS_PORT = 6379
#: The producer's connection must not replay writes on a timeout, or kombu refuses to pipeline.
PRODUCER_TRANSPORT_OPTIONS = {"retry_on_timeout": False}

def _log_retry(what: str) -> Any:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s: attempt %d failed (%s: %s); retrying in %.1f s",
                    what, state.attempt_number, type(exc).__name__, exc, delay)

    return before_sleep


def retrying(
    settings: Settings, *, what: str, attempts: int | None = None, min_total_s: float | None = None,
    max_total_s: float | None = None,
) -> Retrying:
    """Retry :class:`~farm.errors.TransientError` with exponential backoff.

    Backoff ``retry_base_s`` doubling, jitter (up to ``retry_base_s``) and a cap (``retry_cap_s``),
    ``retry_count`` times (or ``attempts``). With ``min_total_s``, keep retrying at least that long
    (recording a finished render survives a ledger outage of that length); with ``max_total_s``,
    stop once that long has passed (a producer reports back within seconds). Other errors are
    raised at once.
    """
    count = settings.retry_count if attempts is None else attempts
    stop: stop_base = stop_after_attempt(count + 1)
    if min_total_s is not None:
        stop = stop_after_attempt(count + 1) & stop_after_delay(min_total_s)
    if max_total_s is not None:
        stop = stop | stop_before_delay(max_total_s)  # (no attempt starts past the budget)
    return Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop,
        wait=wait_exponential(multiplier=settings.retry_base_s, max=settings.retry_cap_s)
        + wait_random(0, settings.retry_base_s),
        before_sleep=_log_retry(what),
        reraise=True,
    )


def _broker_errors(app: Celery) -> tuple[type[BaseException], ...]:
    with app.connection_for_write() as conn:
        found = (KombuError, OSError, *conn.connection_errors, *conn.channel_errors)
    return tuple(dict.fromkeys(found))


def enqueue_jobs(
    ledger: Ledger,
    jobs: Sequence[tuple[str, str]],
    *,
    app: Celery | None = None,
    settings: Settings | None = None,
    attempts: int | None = None,
    max_total_s: float | None = None,
    mark: bool = True,
) -> int:
    """Send one ``farm.render`` message per ``(job_id, route)``, then mark them enqueued.

    The jobs are already committed in the ledger. Returns how many were sent. Raises
    :class:`~farm.errors.BrokerUnavailable` when the broker stays unreachable through the retries
    (``attempts``, default ``FARM_RETRY_COUNT``; at most ``max_total_s`` seconds); the jobs sent
    before that are marked.
    """
    sent, error = send_jobs(ledger, jobs, app=app, settings=settings, attempts=attempts, max_total_s=max_total_s,
                            mark=mark)
    if error is not None:
        raise error
    return len(sent)


def send_jobs(
    ledger: Ledger,
    jobs: Sequence[tuple[str, str]],
    *,
    app: Celery | None = None,
    settings: Settings | None = None,
    attempts: int | None = None,
    max_total_s: float | None = None,
    mark: bool = True,
) -> tuple[list[str], BrokerUnavailable | None]:
    """:func:`enqueue_jobs` that reports instead of raising.

    The ids sent (and, with ``mark``, marked enqueued), and the broker error that stopped it,
    if any. ``mark=False``: the caller marked them already (in the transaction that added
    them).
    """
    if not jobs:
        return [], None
    settings = settings or get_settings()
    app = app or get_app(settings)
    send_chunk = _sender(app, max_total_s)
    sent: list[str] = []
    remaining = list(jobs)

    def send_remaining() -> None:
        # A chunk counts as sent once its pipeline is flushed; a chunk cut short is sent again whole
        # on the next try (a duplicate message is harmless: the claim drops it).
        while remaining:
            chunk = remaining[:SEND_CHUNK]
            send_chunk(chunk)
            sent.extend(job_id for job_id, _ in chunk)
            del remaining[: len(chunk)]

    error: BrokerUnavailable | None = None
    try:
        for attempt in retrying(settings, what=f"sending {len(remaining)} job message(s)", attempts=attempts,
                                max_total_s=max_total_s):
            with attempt:
                send_remaining()
    except BrokerUnavailable as exc:
        error = exc
        log.warning("%d job message(s) not sent (the reaper sends them later): %s", len(remaining), exc)
    finally:
        if sent and mark:
            ledger.mark_enqueued(sent)
    return sent, error


def _sender(app: Celery, max_total_s: float | None) -> Callable[[Sequence[tuple[str, str]]], None]:
    """How one chunk of messages goes out.

    Straight into Redis (:mod:`farm.queue.wire`), else through kombu; either way a broker
    error becomes :class:`~farm.errors.BrokerUnavailable`.
    """
    url = str(app.conf.broker_url)
    broker = redacted_url(url)
    if wire.supports(url):
        import redis

        connect_s = BROKER_CONNECT_TIMEOUT_S if max_total_s is None else min(BROKER_CONNECT_TIMEOUT_S, max_total_s)
        client = wire.client_for(url, connect_timeout_s=connect_s, socket_timeout_s=BROKER_SOCKET_TIMEOUT_S)

        def send_raw(chunk: Sequence[tuple[str, str]]) -> None:
            try:
                wire.publish(app, client, chunk)
            except (redis.RedisError, OSError) as exc:
                raise BrokerUnavailable(f"broker {broker} unavailable: {type(exc).__name__}: {exc}") from exc

        return send_raw
    errors = _broker_errors(app)

    def send_kombu(chunk: Sequence[tuple[str, str]]) -> None:
        # One producer connection per chunk; kombu's publish batch pipelines it on Redis-like
        # transports (it needs a connection that does not replay writes on timeout).
        try:
            with app.connection_for_write(transport_options=PRODUCER_TRANSPORT_OPTIONS) as conn:
                producer = app.amqp.Producer(conn)
                with producer.batch(max_size=2 * len(chunk) + 1):
                    for job_id, route in chunk:
                        app.send_task(TASK_RENDER, args=[job_id], queue=queue_for(route), producer=producer,
                                      ignore_result=True, retry=False)
        except errors as exc:
            raise BrokerUnavailable(f"broker {broker} unavailable: {type(exc).__name__}: {exc}") from exc

    return send_kombu


def broker_reachable(app: Celery, timeout_s: float) -> bool:
    """Whether the broker answers within ``timeout_s`` (Redis: ``PING``; others: a connection)."""
    url = str(app.conf.broker_url)
    try:
        if wire.supports(url):
            return bool(wire.client_for(url, connect_timeout_s=timeout_s, socket_timeout_s=timeout_s).ping())
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
        return True
    except Exception as exc:  # any failure means "not reachable now"; the reason is logged, not shown
        log.warning("broker %s not reachable: %s: %s", redacted_url(url), type(exc).__name__, exc)
        return False


def _drained(app: Celery) -> list[str]:
    """The routes whose queue holds no message right now (Redis brokers; unknown: none)."""
    url = str(app.conf.broker_url)
    if not wire.supports(url):
        return []
    import redis

    client = wire.client_for(url, connect_timeout_s=BROKER_CONNECT_TIMEOUT_S, socket_timeout_s=BROKER_SOCKET_TIMEOUT_S)
    try:
        routes = all_routes()
        lengths = wire.queue_lengths(client, [queue_for(r) for r in routes])
    except (redis.RedisError, OSError) as exc:
        log.debug("reaper: queue lengths unknown (%s)", exc)
        return []
    return [r for r in routes if lengths[queue_for(r)] == 0]


def _resend_stalled(ledger: Ledger, settings: Settings, app: Celery | None, before: datetime,
                    report: ReapReport) -> list[str]:
    closed = []
    for batch_id in ledger.stalled_batches(before, limit=STALLED_BATCHES_PER_PASS):
        rows = ledger.unconfirmed(batch_id)
        pending = [(job_id, route) for job_id, route, _ in rows]
        sent, error = send_jobs(ledger, pending, app=app, settings=settings, attempts=1)
        report.enqueued += sent
        if error is not None:
            report.error = str(error)
            break
        ledger.confirm_sent(batch_id, ledger.get_batch(batch_id).job_count - 1)
        closed.append(batch_id)
    return closed


#: Batches whose sending stalled, handled per reaper pass.
STALLED_BATCHES_PER_PASS = 20
#: Most queued jobs one reaper pass looks at (the rest wait for the next pass).
REAP_LIMIT = 5000


@dataclass
class ReapReport:
    """What one reaper pass did."""

    #: Running jobs whose lease had expired: back to queued, or failed at their attempt cap.
    expired: list[str] = field(default_factory=list)
    #: Queued jobs whose message was sent (again) by this pass.
    enqueued: list[str] = field(default_factory=list)
    #: Queued jobs without a (recent) message, seen for the first time: sent by the next pass if
    #: still unsent then (their producer may be sending them right now).
    deferred: list[str] = field(default_factory=list)
    #: Set when sending failed (the jobs stay queued, unsent; the next pass tries again).
    error: str | None = None
    #: Batches whose unconfirmed messages this pass sent (their sending had stalled).
    batches: list[str] = field(default_factory=list)
    #: Finished jobs whose queued followers this pass settled (left by a worker that died in between).
    settled: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return asdict(self)


def reap(
    ledger: Ledger,
    settings: Settings,
    *,
    app: Celery | None = None,
    now: datetime | None = None,
    limit: int | None = REAP_LIMIT,
    previous: Collection[str] | None = None,
) -> ReapReport:
    """One reaper pass.

    ``requeue_expired()`` (expired leases: queued again with ``enqueued_at`` NULL, or failed
    ``LeaseExpired`` at the cap), then send the queued jobs whose ``enqueued_at`` is NULL or older
    than ``FARM_REENQUEUE_AFTER_S`` — or, when their queue is empty (every message in it was taken,
    so a job still queued lost its message: a producer died between its commit and its send, a
    broker lost data), older than ``FARM_LOST_MESSAGE_GRACE_S``.

    ``previous`` (a worker's periodic reaper passes its last report's ``deferred``): only jobs
    already unsent at the previous pass, or requeued by this one, are sent; the others are deferred
    one pass, so the reaper does not race a producer that is sending them. ``None`` (``farm reap``):
    send them all now. Ledger errors propagate (transient); broker errors are reported in
    :attr:`ReapReport.error`.
    """
    now = now or utcnow()
    report = ReapReport(expired=ledger.requeue_expired(now), settled=ledger.settle_stranded_followers())
    stale_before = now - timedelta(seconds=settings.reenqueue_after_s)
    lost_since = now - timedelta(seconds=settings.lost_message_grace_s)
    lost_before = {route: lost_since for route in _drained(app or get_app(settings))}
    pending = ledger.jobs_to_enqueue(stale_before=stale_before, limit=limit, lost_before=lost_before)
    if previous is not None:
        due = set(previous) | set(report.expired)
        report.deferred = [job_id for job_id, _ in pending if job_id not in due]
        pending = [(job_id, route) for job_id, route in pending if job_id in due]
    if pending:
        report.enqueued, error = send_jobs(ledger, pending, app=app, settings=settings, attempts=1)
        report.error = None if error is None else str(error)
        sent = set(report.enqueued)
        report.deferred += [job_id for job_id, _ in pending if job_id not in sent]
    if report.error is None:
        # Batches whose producer did not confirm every message (it died while sending, or the
        # broker was away): send the unconfirmed rest, then close the batch. `farm reap` does it
        # now; a worker's periodic pass once the grace has passed.
        grace_s = 0.0 if previous is None else settings.lost_message_grace_s
        report.batches = _resend_stalled(ledger, settings, app, now - timedelta(seconds=grace_s), report)
    if report.expired or report.enqueued or report.settled:
        log.info("reaper: %d expired lease(s), %d job message(s) sent, %d finished job(s)' followers settled",
                 len(report.expired), len(report.enqueued), len(report.settled))
    return report
