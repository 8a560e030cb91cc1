"""Prometheus metrics of the farm, read from the ledger and the broker at scrape time.

The HTTP API serves them on ``GET /metrics`` (bearer token required). Everything is computed
from shared state — the ledger (Postgres) and the broker (Redis) — so any API replica reports
the same numbers, and nothing is lost when the API restarts. Each scrape runs a few cheap,
index-backed aggregate queries (results cached for :data:`CACHE_S` seconds):

============================================  ======================================================
metric                                        meaning
============================================  ======================================================
``farm_jobs{status,priority}``                jobs in the ledger per status and priority (gauge)
``farm_jobs_finished_total{status,priority}`` jobs that ended succeeded / failed / cancelled (counter:
                                              terminal statuses never change, so it only grows)
``farm_oldest_queued_job_age_seconds``        age of the oldest queued job, per priority (0: none)
``farm_queue_depth{queue}``                   messages waiting in the Redis list of each farm queue
``farm_broker_unacked_messages``              messages delivered to workers and not yet acknowledged
``farm_broker_up`` / ``farm_ledger_up``       1 when the last read of it worked, else 0
``farm_workers{state}``                       workers seen in the last :data:`WORKER_STALE_S` s (at
                                              least 6 heartbeats), per state (zeros included)
``farm_workers_stale``                        workers not stopped but silent for longer than that
``farm_worker_state{worker,device,state}``    1 per worker seen in the last day, in its state
``farm_worker_seconds_since_seen{worker}``    seconds since the worker last wrote its row
``farm_worker_consecutive_failures{worker}``  the worker's failed jobs in a row (circuit breaker)
``farm_recent_render_seconds{model,quantile}`` render seconds (p50/p90/p99/max) of jobs finished in
                                              the last :data:`RECENT_WINDOW_S` seconds (cache hits
                                              excluded), with ``farm_recent_renders{model}``
``farm_metrics_scrape_seconds``               how long computing these metrics took
============================================  ======================================================

The queries are read-only and use their own small connection pool, so a scrape never competes
with producers for connections; all writes go through :class:`farm.ledger.Ledger`.
Torch-free (the API imports this).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from farm.kinds import route_parts
from farm.ledger import Ledger
from farm.ledger.stats import RECENT_WINDOW_S, LedgerSnapshot
from farm.ledger.status import PRIORITIES, TERMINAL, WORKER_STATES, JobStatus
from farm.ledger.types import utcnow
from farm.queue.names import all_queues, route_of_queue
from farm.settings import Settings

log = logging.getLogger(__name__)

#: Every metric name this module exports (the ops files may only reference these).
METRIC_NAMES: tuple[str, ...] = (
    "farm_jobs",
    "farm_jobs_finished_total",
    "farm_oldest_queued_job_age_seconds",
    "farm_queue_depth",
    "farm_broker_unacked_messages",
    "farm_broker_up",
    "farm_ledger_up",
    "farm_workers",
    "farm_workers_stale",
    "farm_worker_state",
    "farm_worker_seconds_since_seen",
    "farm_worker_consecutive_failures",
    "farm_recent_render_seconds",
    "farm_recent_renders",
    "farm_metrics_scrape_seconds",
)
#: Queues whose depth is reported: one per route (class x model).
QUEUES: tuple[str, ...] = tuple(all_queues())
#: Seconds a scrape's results are reused (several scrapers, or a fast scrape interval).
CACHE_S = 5.0
#: A worker that has not written its row for this long counts as stale (not alive); workers write it
#: every FARM_HEARTBEAT_S, so the window is at least :data:`WORKER_STALE_HEARTBEATS` of those.
WORKER_STALE_S = 180
WORKER_STALE_HEARTBEATS = 6
QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99, 1.0)
#: kombu's Redis transport: priority sub-queues are ``<queue>\x06\x16<step>``; the base list is step 0.
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS: tuple[int, ...] = (3, 6, 9)
KOMBU_UNACKED_KEY = "unacked"
REDIS_TIMEOUT_S = 2.0


# -- reading the ledger ------------------------------------------------------------------------


class LedgerStats:
    """The ledger's monitoring snapshot, read through the gateway (its own small engine)."""

    def __init__(self, url: str, *, clock: Callable[[], datetime] = utcnow):
        self._ledger = Ledger(url, clock=clock)

    def close(self) -> None:
        """Close the ledger connection."""
        self._ledger.close()

    def snapshot(self) -> LedgerSnapshot:
        """Read the ledger's monitoring snapshot now."""
        return self._ledger.stats_snapshot()


# -- reading the broker ------------------------------------------------------------------------


@dataclass
class BrokerSnapshot:
    """What one scrape read from the broker: the queues' depths and the unacked messages."""

    depths: dict[str, int]
    unacked: int


def redis_snapshot(url: str, queues: Sequence[str] = QUEUES) -> BrokerSnapshot:
    """Lengths of the queues' Redis lists (base list and kombu's priority sub-lists) and of the unacked hash.

    Raises the redis client's errors when the broker is unreachable.
    """
    import redis

    client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
            for step in KOMBU_PRIORITY_STEPS:
                pipe.llen(f"{queue}{KOMBU_PRIORITY_SEP}{step}")
        pipe.hlen(KOMBU_UNACKED_KEY)
        values = [int(v) for v in pipe.execute()]
    finally:
        client.close()
    per_queue = 1 + len(KOMBU_PRIORITY_STEPS)
    depths = {q: sum(values[i * per_queue:(i + 1) * per_queue]) for i, q in enumerate(queues)}
    return BrokerSnapshot(depths=depths, unacked=values[-1])


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted values (nearest rank)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), math.ceil(q * len(sorted_values))))
    return sorted_values[rank - 1]


# -- the collector -----------------------------------------------------------------------------


class FarmCollector(Collector):
    """The farm's metrics, computed at scrape time (see the module docstring)."""

    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = utcnow, cache_s: float = CACHE_S):
        self._stats = LedgerStats(settings.ledger_url, clock=clock)
        self._cache_s = cache_s
        self._stale_s = max(WORKER_STALE_S, WORKER_STALE_HEARTBEATS * settings.heartbeat_s)
        broker = settings.broker_url or ""
        self._redis_url = broker if broker.startswith(("redis://", "rediss://", "unix://")) else None
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def close(self) -> None:
        """Close the ledger connection."""
        self._stats.close()

    def collect(self) -> Iterator[Metric]:
        """The farm's metrics, computed now or reused from the last scrape within ``cache_s``."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self._cache_s:
                return iter(self._cached[1])
            started = time.perf_counter()
            found = list(self._ledger_metrics()) + list(self._broker_metrics())
            took = GaugeMetricFamily("farm_metrics_scrape_seconds", "Seconds spent computing the farm metrics.")
            took.add_metric([], time.perf_counter() - started)
            found.append(took)
            self._cached = (time.monotonic(), found)
            return iter(found)

    def _ledger_metrics(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("farm_ledger_up", "1 when the ledger answered the last scrape.")
        try:
            snap = self._stats.snapshot()
        except Exception as exc:  # the scrape must answer: report the ledger down instead
            log.warning("metrics: ledger unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from job_metrics(snap)
        yield from worker_metrics(snap, stale_s=self._stale_s)
        yield from render_metrics(snap)

    def _broker_metrics(self) -> Iterator[Metric]:
        if self._redis_url is None:
            return
        up = GaugeMetricFamily("farm_broker_up", "1 when the broker (Redis) answered the last scrape.")
        try:
            broker = redis_snapshot(self._redis_url)
        except Exception as exc:
            log.warning("metrics: broker unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("farm_queue_depth", "Messages waiting in each farm queue's Redis lists "
                                  "(one queue per class and model).", labels=["queue", "priority", "model"])
        for queue, n in broker.depths.items():
            depth.add_metric([queue, *route_parts(route_of_queue(queue))], n)
        yield depth
        unacked = GaugeMetricFamily("farm_broker_unacked_messages",
                                    "Messages delivered to workers and not yet acknowledged.")
        unacked.add_metric([], broker.unacked)
        yield unacked


def job_metrics(snap: LedgerSnapshot) -> Iterator[Metric]:
    """The job gauges and counters: jobs per status and priority, finished jobs, the oldest queued."""
    gauge = GaugeMetricFamily("farm_jobs", "Jobs in the ledger per status and priority.",
                              labels=["status", "priority"])
    finished = CounterMetricFamily("farm_jobs_finished", "Jobs that ended, per final status and priority.",
                                   labels=["status", "priority"])
    for status in JobStatus:
        for priority in PRIORITIES:
            n = snap.job_counts.get((status.value, priority), 0)
            gauge.add_metric([status.value, priority], n)
            if status in TERMINAL:
                finished.add_metric([status.value, priority], n)
    yield gauge
    yield finished
    age = GaugeMetricFamily("farm_oldest_queued_job_age_seconds",
                            "Age of the oldest queued job per priority (0 when none is queued).",
                            labels=["priority"])
    for priority in PRIORITIES:
        oldest = snap.oldest_queued.get(priority)
        age.add_metric([priority], 0.0 if oldest is None else max(0.0, (snap.now - oldest).total_seconds()))
    yield age


def worker_metrics(snap: LedgerSnapshot, *, stale_s: float = WORKER_STALE_S) -> Iterator[Metric]:
    """The worker gauges: each worker's state, seconds since seen, failures in a row; counts per state."""
    by_state = dict.fromkeys(WORKER_STATES, 0)
    stale = 0
    state = GaugeMetricFamily("farm_worker_state", "1 for each worker (seen in the last day) in its state.",
                              labels=["worker", "device", "state"])
    since = GaugeMetricFamily("farm_worker_seconds_since_seen", "Seconds since the worker last wrote its row.",
                              labels=["worker"])
    failures = GaugeMetricFamily("farm_worker_consecutive_failures", "Failed jobs in a row of the worker.",
                                 labels=["worker"])
    for w in snap.workers:
        age = max(0.0, (snap.now - w.last_seen_at).total_seconds())
        if age <= stale_s:
            by_state[w.state] = by_state.get(w.state, 0) + 1
        elif w.state != "stopped":
            stale += 1
        state.add_metric([w.name, w.device, w.state], 1)
        since.add_metric([w.name], age)
        failures.add_metric([w.name], w.consecutive_failures)
    counts = GaugeMetricFamily("farm_workers", f"Workers seen in the last {stale_s:g} s, per state.",
                               labels=["state"])
    for name, n in by_state.items():
        counts.add_metric([name], n)
    stale_gauge = GaugeMetricFamily("farm_workers_stale",
                                    f"Workers not stopped but silent for more than {stale_s:g} s.")
    stale_gauge.add_metric([], stale)
    yield from (counts, stale_gauge, state, since, failures)


def render_metrics(snap: LedgerSnapshot) -> Iterator[Metric]:
    """The render time quantiles and counts of recently finished jobs, per model."""
    seconds = GaugeMetricFamily("farm_recent_render_seconds",
                                f"Render seconds of jobs finished in the last {RECENT_WINDOW_S} s (quantiles).",
                                labels=["model", "quantile"])
    count = GaugeMetricFamily("farm_recent_renders", f"Jobs rendered in the last {RECENT_WINDOW_S} s.",
                              labels=["model"])
    for model, values in sorted(snap.render_seconds.items()):
        ordered = sorted(values)
        for q in QUANTILES:
            seconds.add_metric([model, f"{q:g}"], quantile(ordered, q))
        count.add_metric([model], len(ordered))
    yield seconds
    yield count


def make_registry(settings: Settings) -> tuple[CollectorRegistry, FarmCollector]:
    """A registry holding only the farm's collector (not the process-global default registry)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = FarmCollector(settings)
    registry.register(collector)
    return registry, collector
