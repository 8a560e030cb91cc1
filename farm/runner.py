"""Running jobs that are in the ledger: claim, render, store, record.

This is the one code path every render takes — ``farm render`` in-process on the embedded
default, and the farm's workers — so a job recorded by one is indistinguishable from a job
recorded by the other. The flow (rq-style, each outcome handed to one handler):

1. **claim** each job in the ledger (queued -> running with a lease). A job that is not
   claimable (already running under a live lease, already finished, cancelled) is *dropped*:
   never rendered twice.
2. **render** compatible jobs together (expert-phase batching, up to ``phase_batch`` at a time),
   heartbeating the lease from the step callback; a job whose heartbeat fails (cancelled, or
   its lease was taken over) is dropped from the batch at its next step.
3. **store** each frame stack in the content-addressed output store.
4. **record**: :meth:`handle_success`, :meth:`handle_retry` (transient errors: back to queued
   while attempts remain) or :meth:`handle_failure` (permanent errors: failed at once).

Imports torch only through the engine object it is given; importing this module is cheap.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from farm.errors import ExpectedError, IllegalTransition, RenderCancelled
from farm.ledger import JobRecord, Ledger

if TYPE_CHECKING:
    from farm.engine.outputs import OutputStore
    from farm.engine.render import Engine, RenderResult

log = logging.getLogger(__name__)

#: Outcome names (what happened to one job id handed to :meth:`JobRunner.run`).
SUCCEEDED = "succeeded"
FAILED = "failed"
RETRY = "retry"
CANCELLED = "cancelled"
DROPPED = "dropped"


def worker_identity(device: str) -> str:
    """A worker's name in the ledger: host, device and process (unique per process)."""
    return f"{socket.gethostname()}/{device}/{os.getpid()}"


@dataclass
class Outcome:
    job_id: str
    outcome: str
    record: JobRecord | None = None
    error: str | None = None


@dataclass
class JobRunner:
    """Runs ledger jobs on one engine (one device) for one worker identity."""

    ledger: Ledger
    engine: Engine
    store: OutputStore
    worker_host: str
    worker_device: str
    lease_s: float
    heartbeat_s: float
    phase_batch: int = 1
    clock: Callable[[], float] = time.monotonic
    _env: dict[str, Any] | None = field(default=None, repr=False)

    # -- the loop -------------------------------------------------------------------------------
    def run(self, job_ids: Sequence[str]) -> list[Outcome]:
        """Claim, render and record ``job_ids``; one :class:`Outcome` per id, in order."""
        outcomes: dict[str, Outcome] = {}
        claimed: list[JobRecord] = []
        for job_id in job_ids:
            record = self.ledger.claim(
                job_id, worker_host=self.worker_host, worker_device=self.worker_device, lease_s=self.lease_s
            )
            if record is None:
                outcomes[job_id] = Outcome(job_id, DROPPED, self.ledger.get_job(job_id))
                log.info("job %s not claimable (already taken or finished): dropped", job_id)
            else:
                claimed.append(record)
        for group in self._groups(claimed):
            for outcome in self._render_group(group):
                outcomes[outcome.job_id] = outcome
        return [outcomes[j] for j in job_ids]

    def _groups(self, jobs: list[JobRecord]) -> list[list[JobRecord]]:
        from farm.engine.wan import compatibility_key

        by_key: dict[Any, list[JobRecord]] = {}
        for job in jobs:
            by_key.setdefault(compatibility_key(job.params), []).append(job)
        size = max(1, self.phase_batch)
        return [group[i : i + size] for group in by_key.values() for i in range(0, len(group), size)]

    def _render_group(self, jobs: list[JobRecord]) -> list[Outcome]:
        canons = [dict(j.params) for j in jobs]
        last_beat = [self.clock()] * len(jobs)
        lost: set[int] = set()

        def on_step(index: int, step: int, total: int, phase: str) -> bool | None:
            if self.clock() - last_beat[index] < self.heartbeat_s:
                return None
            last_beat[index] = self.clock()
            alive = self.ledger.heartbeat(
                jobs[index].id, worker_host=self.worker_host, lease_s=self.lease_s,
                progress=min(1.0, step / max(1, total)),
            )
            if not alive:
                lost.add(index)
                return False
            return None

        load_started = time.perf_counter()
        try:
            components = self.engine.load(jobs[0].model_name)
            load_s = time.perf_counter() - load_started
            results = self.engine.render(canons, on_step=on_step)
        except ExpectedError as exc:
            return [self.handle_failure(job, exc) for job in jobs]
        except Exception as exc:  # transient (OOM, storage, ...) or unexpected: retry, capped by attempts
            return [self.handle_retry(job, exc) for job in jobs]
        outcomes = []
        for job, result in zip(jobs, results, strict=True):
            if result.cancelled or result.frames is None:
                outcomes.append(self.handle_cancelled(job, lost_lease=result.index in lost))
                continue
            try:
                outcomes.append(self.handle_success(job, result, components.weights_fingerprint, load_s))
            except ExpectedError as exc:
                outcomes.append(self.handle_failure(job, exc))
            except Exception as exc:
                outcomes.append(self.handle_retry(job, exc))
        return outcomes

    # -- outcome handlers -----------------------------------------------------------------------
    def environment(self) -> dict[str, Any]:
        if self._env is None:
            from farm.engine.envinfo import environment_fingerprint

            self._env = environment_fingerprint()
        return self._env

    def handle_success(
        self, job: JobRecord, result: RenderResult, weights_fingerprint: str, load_s: float
    ) -> Outcome:
        effective = result.effective_params
        assert result.frames is not None
        fps, output_format = int(effective["fps"]), str(effective["output_format"])
        stored = self.store.put_render(result.frames, fps, job.job_key, output_format)
        timings = {
            "load_s": round(load_s, 6),
            "render_s": round(float(result.stats.get("seconds", 0.0)), 6),
            "encode_s": round(stored.encode_seconds, 6),
            "stats": result.stats,
            "degraded": result.degraded,
            "output_reused": stored.reused,
        }
        try:
            record = self.ledger.record_success(
                job.id,
                output_uri=stored.uri,
                file_sha256=stored.file_sha256,
                frames_sha256=stored.frames_sha256,
                effective_params=effective,
                weights_fingerprint=weights_fingerprint,
                env_fingerprint=self.environment(),
                timings=timings,
                worker_host=self.worker_host,
            )
        except IllegalTransition:
            # Cancelled, or our lease expired and the job moved on: the output stays in the store
            # (content-addressed, so a later render of the same job finds the same file).
            log.warning("job %s: finished but no longer ours; output kept at %s", job.id, stored.uri)
            return Outcome(job.id, DROPPED, self.ledger.get_job(job.id), "lost the job before recording")
        return Outcome(job.id, SUCCEEDED, record)

    def handle_failure(self, job: JobRecord, exc: BaseException) -> Outcome:
        """A permanent error: the job fails at once with the reason."""
        log.error("job %s failed: %s: %s", job.id, type(exc).__name__, exc)
        return self._record_error(job, exc, retry=False)

    def handle_retry(self, job: JobRecord, exc: BaseException) -> Outcome:
        """A transient (or unexpected) error: back to queued while attempts remain."""
        log.warning("job %s attempt %d failed: %s: %s", job.id, job.attempts, type(exc).__name__, exc)
        return self._record_error(job, exc, retry=True)

    def handle_cancelled(self, job: JobRecord, *, lost_lease: bool) -> Outcome:
        record = self.ledger.get_job(job.id)
        if not lost_lease and record.status.value == "running":
            # Cancelled by the step callback for another reason: hand it back.
            record = self.ledger.record_failure(
                job.id, error_type=RenderCancelled.__name__, error_message="render stopped", retry=True,
                worker_host=self.worker_host,
            )
        return Outcome(job.id, CANCELLED, record)

    def _record_error(self, job: JobRecord, exc: BaseException, *, retry: bool) -> Outcome:
        try:
            record = self.ledger.record_failure(
                job.id, error_type=type(exc).__name__, error_message=str(exc) or repr(exc), retry=retry,
                worker_host=self.worker_host,
            )
        except IllegalTransition:
            return Outcome(job.id, DROPPED, self.ledger.get_job(job.id), str(exc))
        outcome = RETRY if record.status.value == "queued" else FAILED
        return Outcome(job.id, outcome, record, f"{type(exc).__name__}: {exc}")
