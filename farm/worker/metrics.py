"""A worker's own Prometheus metrics: jobs by outcome, render time, expert swaps and transfers.

Served by ``prometheus_client`` on ``FARM_WORKER_METRICS_PORT`` (+ the GPU index, so one port per
worker process on a node), bound to ``FARM_WORKER_METRICS_HOST`` (loopback by default: keep it on
a private network — like Flower's, this endpoint has no auth). Off when the port is unset.

The swap and transfer counters come from the placement layer's log, recorded with each job
(``timings.stats.batch``); a phase batch's totals are shared out over its jobs, so the counters
add up to the batch totals.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from farm.worker.runner import Outcome, OutcomeKind

log = logging.getLogger(__name__)

#: Render-time buckets (seconds): tiny CPU renders to 720P A14B renders.
RENDER_BUCKETS_S: tuple[float, ...] = (0.1, 0.5, 1, 5, 15, 60, 180, 400, 800, 1600, 3600)
METRIC_NAMES: tuple[str, ...] = (
    "farm_worker_jobs_total",
    "farm_worker_render_seconds",
    "farm_worker_expert_swaps_total",
    "farm_worker_transfer_bytes_total",
    "farm_worker_transfer_seconds_total",
    "farm_worker_circuit_open",
    "farm_worker_consecutive_failures",
)


def metrics_port(base_port: int, device: str) -> int:
    """The port of the worker on ``device``: ``base + N`` for ``cuda:N``, ``base`` otherwise."""
    if device.startswith("cuda:"):
        return base_port + int(device.split(":", 1)[1])
    return base_port


class WorkerMetrics:
    """The counters of one worker process (its own registry: nothing global)."""

    def __init__(self, worker: str, device: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"worker": worker, "device": device}
        names = list(labels)
        self._jobs = Counter("farm_worker_jobs", "Jobs handled, by outcome.", [*names, "outcome"],
                             registry=self.registry)
        self._labels = labels
        self._render = Histogram("farm_worker_render_seconds", "Render seconds per job (cache hits excluded).",
                                 names, buckets=RENDER_BUCKETS_S, registry=self.registry).labels(**labels)
        self._swaps = Counter("farm_worker_expert_swaps", "Expert swaps (onloads on demand).", names,
                              registry=self.registry).labels(**labels)
        self._bytes = Counter("farm_worker_transfer_bytes", "Bytes moved by the placement layer.", names,
                              registry=self.registry).labels(**labels)
        self._seconds = Counter("farm_worker_transfer_seconds", "Seconds spent moving modules.", names,
                                registry=self.registry).labels(**labels)
        self._circuit = Gauge("farm_worker_circuit_open", "1 while the circuit breaker is open.", names,
                              registry=self.registry).labels(**labels)
        self._failures = Gauge("farm_worker_consecutive_failures", "Failed jobs in a row.", names,
                               registry=self.registry).labels(**labels)

    def serve(self, host: str, port: int) -> None:
        """Serve the registry on ``http://host:port/metrics`` from a background thread."""
        start_http_server(port, addr=host, registry=self.registry)
        log.info("worker metrics on http://%s:%d/metrics", host, port)

    def observe(self, outcomes: Iterable[Outcome], *, consecutive_failures: int, circuit_open: bool) -> None:
        """Count the outcomes, observe the timings of the renders, and set the breaker gauges."""
        for outcome in outcomes:
            self._jobs.labels(**self._labels, outcome=outcome.outcome.value).inc()
            timings = outcome.record.timings if outcome.record is not None else None
            if outcome.outcome == OutcomeKind.CACHE_HIT or not timings or timings.get("cache_hit"):
                continue
            self._observe_timings(timings)
        self._failures.set(consecutive_failures)
        self._circuit.set(1 if circuit_open else 0)

    def _observe_timings(self, timings: Mapping[str, Any]) -> None:
        render_s = timings.get("render_s")
        if isinstance(render_s, int | float):
            self._render.observe(float(render_s))
        batch = (timings.get("stats") or {}).get("batch") or {}
        size = max(1, int(batch.get("size") or 1))
        transfers = batch.get("transfers") or {}
        self._swaps.inc(float(batch.get("swaps") or 0) / size)
        self._bytes.inc(float(transfers.get("bytes") or 0) / size)
        self._seconds.inc(float(transfers.get("seconds") or 0.0) / size)
