"""Running jobs that are in the ledger: claim, render, store, record.

This is the one code path every render takes — ``farm render`` in-process on the embedded
default, and the farm's workers — so a job recorded by one is indistinguishable from a job
recorded by the other. The flow (rq-style, each outcome handed to one handler):

1. **claim** each job in the ledger (queued -> running with a lease). A job that is not
   claimable (already running under a live lease, already finished, cancelled, a follower) is
   *dropped*: never rendered twice. Workers claim before calling :meth:`JobRunner.run_claimed`.
   Before rendering, :meth:`JobRunner.decide_degradation` reads the farm's load once per claimed
   batch: under load, jobs that allow it render at their profile's ``draft`` settings
   (:mod:`farm.worker.degrade`), in groups of their own.
2. **load** the model (kept warm by the engine), register its weights fingerprint, and answer
   jobs whose output already exists (same job key, same weights, the file hashed and intact) as
   cache hits, unless the job says ``no_cache``; a damaged output is marked in the ledger and the
   job renders.
3. **render** compatible jobs together (expert-phase batching, up to ``phase_batch`` at a time).
   The runner's heartbeat thread (:mod:`farm.worker.heartbeat`) beats every job of the group every
   ``heartbeat_s`` (through the model load, the render, the encode and the recording); a job
   whose heartbeat is refused (cancelled, or its lease was taken over) is dropped from the batch
   at its next step.
4. **store** each frame stack in the content-addressed output store.
5. **record**: :meth:`handle_success`, or :meth:`handle_error`, which asks
   :func:`farm.errors.classify`: :meth:`handle_retry` (transient errors: back to queued while
   attempts remain) or :meth:`handle_failure` (permanent errors: failed at once), each outcome
   saying whether it counts against the worker's circuit breaker. When
   :attr:`JobRunner.stop` is set (a worker's shutdown deadline) the jobs still rendering are
   handed back with ``ledger.release`` (the attempt is not counted).

Ledger and storage calls go through :attr:`JobRunner.retry` (the worker passes tenacity backoff;
``farm render`` calls once). Imports torch only through the engine object it is given; importing
this module is cheap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from farm.errors import IllegalTransition, RenderCancelled, TransientError, classify
from farm.ledger import JobRecord, Ledger
from farm.ledger.records import OutputMark
from farm.settings import WORKER_STALE_HEARTBEATS
from farm.spec import compatibility_key
from farm.worker.degrade import Degraded, DegradePolicy, degraded_canon
from farm.worker.heartbeat import Heartbeat

if TYPE_CHECKING:
    import numpy as np

    from farm.settings import Settings
    from farm.store import StoreWriter

log = logging.getLogger(__name__)

T = TypeVar("T")

class OutcomeKind(StrEnum):
    """What happened to one job handed to :meth:`JobRunner.run`."""

    SUCCEEDED = "succeeded"
    CACHE_HIT = "cache-hit"
    FAILED = "failed"
    RETRY = "retry"
    CANCELLED = "cancelled"
    DROPPED = "dropped"
    RELEASED = "released"
    #: The outcome could not be written (the ledger stayed unreachable through the retries): the
    #: lease expires and the reaper queues the job again; its output, if any, stays in the store.
    UNRECORDED = "unrecorded"


#: Called at every denoising step with (job index, step, total steps, phase); False stops that job.
StepCallback = Callable[[int, int, int, str], "bool | None"]


class LoadedModel(Protocol):
    """What the runner needs of a loaded model."""

    @property
    def weights_fingerprint(self) -> str:
        """The fingerprint of the weights the model was loaded from."""


class RenderedJob(Protocol):
    """What the runner needs of one job's render (:class:`farm.engine.render.RenderResult`)."""

    @property
    def frames(self) -> np.ndarray | None:
        """uint8 frames (F, H, W, 3); None when cancelled."""

    @property
    def effective_params(self) -> dict[str, Any]:
        """The canonical parameters actually rendered."""

    @property
    def stats(self) -> dict[str, Any]:
        """Per-job render statistics (``seconds``, ``batch``, ...)."""

    @property
    def cancelled(self) -> bool:
        """True when the render was stopped before its last step."""

    @property
    def degraded(self) -> bool:
        """True when it was rendered with degraded parameters (after running out of memory)."""


class RenderEngine(Protocol):
    """The render engine the runner drives (:class:`farm.engine.render.Engine`; unit tests plug in a fake one)."""

    def load(self, model_name: str) -> LoadedModel:
        """Load ``model_name`` (kept warm)."""

    def render(self, canons: Sequence[Mapping[str, Any]],
               on_step: StepCallback | None = None) -> Sequence[RenderedJob]:
        """Render compatible canonical specs together; one result per job, in order."""


class Retry(Protocol):
    """Runs ``fn`` with retries for transient errors.

    ``durable``: the long policy used to record an outcome whose output is already stored.
    """

    def __call__(self, what: str, fn: Callable[[], T], *, durable: bool = False) -> T:
        """``fn()``, retried on transient errors; ``what`` names it in the log."""


def call_once(what: str, fn: Callable[[], T], *, durable: bool = False) -> T:
    """The :class:`Retry` that does not retry (``farm render``: the user sees the error)."""
    return fn()


#: Fault injection (tests only): called with a group right before it renders and a function that
#: says whether to stop waiting; returns the jobs that must fail, with their errors.
BeforeRender = Callable[[Sequence[JobRecord], Callable[[], bool]], Mapping[str, BaseException]]


@dataclass
class Outcome:
    """One job's outcome (with its record as the ledger has it now, when known)."""

    job_id: str
    outcome: OutcomeKind
    record: JobRecord | None = None
    error: str | None = None
    #: A failure that says the worker is unwell (counts towards its circuit breaker); a job's own
    #: problem (a spec the model cannot render, a refused output location) does not.
    worker_fault: bool = False


@dataclass
class _Group:
    """A compatible group on its way through the steps.

    The jobs, their heartbeat and the outcomes recorded so far (each recorded outcome ends its
    job's heartbeats).
    """

    jobs: list[JobRecord]
    beat: Heartbeat
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    #: The group's jobs that render degraded (every job of a group renders with the same settings).
    degraded: Mapping[str, Degraded] = field(default_factory=dict)

    def done(self, outcome: Outcome) -> None:
        self.beat.finish(outcome.job_id)
        self.outcomes[outcome.job_id] = outcome

    def canon(self, job: JobRecord) -> Mapping[str, Any]:
        """The canonical spec ``job`` renders with: its own, or its degraded one."""
        found = self.degraded.get(job.id)
        return job.params if found is None else found.canon

    def reason(self, job: JobRecord) -> str | None:
        """Why ``job`` renders degraded (None: as asked)."""
        found = self.degraded.get(job.id)
        return None if found is None else found.reason


@dataclass
class JobRunner:
    """Runs ledger jobs on one engine (one device) for one worker identity."""

    ledger: Ledger
    engine: RenderEngine
    store: StoreWriter
    worker_host: str
    worker_device: str
    lease_s: float
    heartbeat_s: float
    phase_batch: int = 1
    clock: Callable[[], float] = time.monotonic
    #: How ledger and storage calls are retried (see :class:`Retry`).
    retry: Retry = call_once
    #: Test-only fault injection (see :mod:`farm.worker.faults`).
    before_render: BeforeRender | None = None
    #: Answer jobs from existing outputs (same job key and weights) after the model is loaded.
    use_cache: bool = True
    #: When jobs that allow it render at their profile's draft settings (see :mod:`farm.worker.degrade`).
    degrade: DegradePolicy = field(default_factory=DegradePolicy)
    #: Set to stop rendering now (shutdown deadline): rendering jobs are handed back.
    stop: threading.Event = field(default_factory=threading.Event)
    _env: dict[str, Any] | None = field(default=None, repr=False)
    _heartbeat: Heartbeat | None = field(default=None, repr=False)
    _registered: set[tuple[str, str]] = field(default_factory=set, repr=False)

    @property
    def heartbeat(self) -> Heartbeat:
        """The runner's one heartbeat (its thread outlives a batch: see :mod:`farm.worker.heartbeat`)."""
        if self._heartbeat is None:
            self._heartbeat = Heartbeat(self.ledger, worker_host=self.worker_host, lease_s=self.lease_s,
                                        interval=self.heartbeat_s)
        return self._heartbeat

    # -- the loop -------------------------------------------------------------------------------
    def run(self, job_ids: Sequence[str]) -> list[Outcome]:
        """Claim, render and record ``job_ids``; one :class:`Outcome` per id, in order."""
        outcomes: dict[str, Outcome] = {}
        claimed: list[JobRecord] = []
        for job_id in job_ids:
            record = self.claim(job_id)
            if record is None:
                outcomes[job_id] = Outcome(job_id, OutcomeKind.DROPPED, self.ledger.get_job(job_id))
                log.info("job %s not claimable (already taken or finished): dropped", job_id)
            else:
                claimed.append(record)
        for outcome in self.run_claimed(claimed):
            outcomes[outcome.job_id] = outcome
        return [outcomes[j] for j in job_ids]

    def claim(self, job_id: str) -> JobRecord | None:
        """Claim one job for this worker (None: not claimable, drop its message)."""
        return self.retry(f"claiming job {job_id}", lambda: self.ledger.claim(
            job_id, worker_host=self.worker_host, worker_device=self.worker_device, lease_s=self.lease_s))

    def claim_group(self, job_id: str) -> list[JobRecord]:
        """Claim ``job_id`` and up to ``phase_batch - 1`` queued jobs with the same compat key.

        They render with it (expert-phase batching); [] when ``job_id`` is not claimable. An
        interactive job is batched only with interactive jobs (a batch job would slow it down); a
        batch job takes interactive jobs first, then the oldest. A job attempted before is
        rendered alone (poison isolation).
        """
        primary = self.claim(job_id)
        if primary is None:
            return []
        claimed = [primary]
        if self.phase_batch > 1 and primary.attempts <= 1:
            priority = "interactive" if primary.priority == "interactive" else None
            try:
                claimed += self.retry(f"claiming jobs compatible with {job_id}", lambda: self.ledger.claim_more(
                    primary.compat_key, limit=self.phase_batch - 1, worker_host=self.worker_host,
                    worker_device=self.worker_device, lease_s=self.lease_s, priority=priority))
            except TransientError as exc:
                log.warning("job %s: no compatible jobs claimed (%s); rendering it alone", job_id, exc)
        return claimed

    def run_claimed(self, records: Sequence[JobRecord]) -> list[Outcome]:
        """Render and record jobs this worker has already claimed; one outcome per job, in order.

        Every job's lease is heartbeated from the start until its outcome is recorded (a job
        waiting for an earlier group keeps its lease). Jobs attempted before (``attempts > 1``: a
        previous attempt crashed or failed) are rendered alone, so a poison job cannot take
        compatible jobs down with it twice.
        """
        outcomes: dict[str, Outcome] = {}
        plan = self.decide_degradation(records)
        with self.heartbeat.tracking(records) as beat:
            for group in self._groups(list(records), plan):
                if self.stop.is_set():  # shutting down: groups not started yet go back at once
                    group_outcomes = [self.handle_release(job, "worker shutting down") for job in group]
                else:
                    group_outcomes = self._render_group(group, beat, plan)
                for outcome in group_outcomes:
                    outcomes[outcome.job_id] = outcome
                    beat.finish(outcome.job_id)
        return [outcomes[r.id] for r in records]

    def decide_degradation(self, records: Sequence[JobRecord]) -> dict[str, Degraded]:
        """Which claimed jobs render at their profile's draft settings, and why (see :mod:`farm.worker.degrade`).

        Only jobs with ``allow_degrade`` that the draft settings make cheaper, and only when the
        farm's load (one ledger query, read only when there is such a job and a threshold is set)
        passes a threshold. A load that cannot be read renders everything as asked.
        """
        if not self.degrade.enabled:
            return {}
        cheaper = {job.id: canon for job in records
                   if job.allow_degrade and (canon := degraded_canon(job.params)) is not None}
        if not cheaper:
            return {}
        try:
            # the wait of interactive jobs of these models: people waiting for the same GPUs (routing)
            load = self.ledger.farm_load(live_within_s=WORKER_STALE_HEARTBEATS * self.heartbeat_s,
                                         models={job.model_name for job in records})
        except Exception as exc:  # degradation is optional: never let it stop a render
            log.warning("the farm's load was not read (%s: %s): rendering as asked", type(exc).__name__, exc)
            return {}
        reason = self.degrade.reason(load)
        if reason is None:
            return {}
        log.warning("jobs %s render at draft settings: %s", ", ".join(cheaper), reason)
        return {job_id: Degraded(canon, reason) for job_id, canon in cheaper.items()}

    def _groups(self, jobs: list[JobRecord], plan: Mapping[str, Degraded] | None = None) -> list[list[JobRecord]]:
        """Compatible groups of at most ``phase_batch`` (by the settings each job renders with)."""
        plan = plan or {}
        by_key: dict[Any, list[JobRecord]] = {}
        alone: list[list[JobRecord]] = []
        for job in jobs:
            if job.attempts > 1:
                alone.append([job])
            else:
                params = plan[job.id].canon if job.id in plan else job.params
                by_key.setdefault(compatibility_key(params), []).append(job)
        size = max(1, self.phase_batch)
        return [group[i : i + size] for group in by_key.values() for i in range(0, len(group), size)] + alone

    def _render_group(self, jobs: list[JobRecord], beat: Heartbeat, plan: Mapping[str, Degraded]) -> list[Outcome]:
        """One compatible group through the named steps.

        :meth:`load_model` -> :meth:`answer_cache_hits` -> :meth:`render_batch` ->
        :meth:`store_and_record`.
        """
        group = _Group(jobs, beat, degraded={j.id: plan[j.id] for j in jobs if j.id in plan})
        loaded = self.load_model(group)
        if loaded is not None:
            fingerprint, load_s = loaded
            todo = self.answer_cache_hits(group, fingerprint)
            todo = self._inject_faults(group, todo)
            rendered = self.render_batch(group, todo)
            self.store_and_record(group, rendered, fingerprint, load_s)
        return [group.outcomes[j.id] for j in jobs]

    def load_model(self, group: _Group) -> tuple[str, float] | None:
        """Load the group's model (kept warm by the engine) and register its weights fingerprint.

        Returns ``(fingerprint, load seconds)``, or None when it could not load (every job's
        outcome set).
        """
        started = time.perf_counter()
        model = group.jobs[0].model_name
        try:
            components = self.engine.load(model)
        except Exception as exc:
            for job in group.jobs:
                group.done(self.handle_error(job, exc))
            return None
        self._register_model(model, components.weights_fingerprint)
        return components.weights_fingerprint, time.perf_counter() - started

    def answer_cache_hits(self, group: _Group, fingerprint: str) -> list[JobRecord]:
        """Answer the jobs whose output already exists (see :meth:`_cache_hit`); the rest."""
        todo = []
        for job in group.jobs:
            hit = self._cache_hit(job, fingerprint) if self.use_cache and not job.no_cache else None
            if hit is None:
                todo.append(job)
            else:
                group.done(hit)
        return todo

    def _inject_faults(self, group: _Group, todo: list[JobRecord]) -> list[JobRecord]:
        if not todo or self.before_render is None:
            return todo
        ids = [j.id for j in todo]
        failing = self.before_render(todo, lambda: self._all_stopped(group.beat, ids))
        for job in todo:
            if job.id in failing:
                group.done(self.handle_error(job, failing[job.id]))
        return [j for j in todo if j.id not in failing]

    def render_batch(self, group: _Group, todo: list[JobRecord]) -> list[tuple[JobRecord, RenderedJob]]:
        """Render the jobs together (expert-phase batching).

        Each step reports progress to the heartbeat and stops a job whose lease was lost (or
        every job, at a shutdown deadline).
        """
        if not todo:
            return []
        beat = group.beat

        def on_step(index: int, step: int, total: int, phase: str) -> bool | None:
            job_id = todo[index].id
            beat.progress[job_id] = step / max(1, total)
            if job_id in beat.lost or self.stop.is_set():
                return False
            return None

        try:
            results = self.engine.render([dict(group.canon(j)) for j in todo], on_step=on_step)
        except Exception as exc:
            for job in todo:
                group.done(self.handle_error(job, exc))
            return []
        return list(zip(todo, results, strict=True))

    def store_and_record(self, group: _Group, rendered: list[tuple[JobRecord, RenderedJob]], fingerprint: str,
                         load_s: float) -> None:
        """Store each render's files and record its outcome (a stopped render: cancelled or handed back)."""
        for job, result in rendered:
            if result.cancelled or result.frames is None:
                group.done(self.handle_cancelled(job, lost_lease=job.id in group.beat.lost))
                continue
            try:
                group.done(self.handle_success(job, result, fingerprint, load_s, degraded_reason=group.reason(job)))
            except Exception as exc:
                group.done(self.handle_error(job, exc))

    def _all_stopped(self, beat: Heartbeat, job_ids: Sequence[str]) -> bool:
        return self.stop.is_set() or all(j in beat.lost for j in job_ids)

    # -- model and cache ------------------------------------------------------------------------
    def _register_model(self, name: str, fingerprint: str) -> None:
        if (name, fingerprint) in self._registered:
            return
        try:
            self.retry(f"registering model {name}", lambda: self.ledger.register_model(
                name, fingerprint, worker=self.worker_host))
        except TransientError as exc:
            log.warning("model %s: fingerprint not registered (%s); trying again at the next job", name, exc)
            return
        self._registered.add((name, fingerprint))

    def _cache_hit(self, job: JobRecord, fingerprint: str) -> Outcome | None:
        """Answer ``job`` from an existing output of the same job key and weights, if any, after hashing its file.

        An output that is missing or corrupt is marked so in the ledger (the cache never answers
        from it again) and the job renders.
        """
        try:
            found = self.retry(f"cache lookup for job {job.id}",
                               lambda: self.ledger.find_cache_original(job.job_key, fingerprint))
        except TransientError as exc:
            log.warning("job %s: cache lookup failed (%s); rendering", job.id, exc)
            return None
        if found is None or found[0].id == job.id:
            return None
        original, output = found
        try:
            check = self.store.check(output.uri, output.file_sha256, size_bytes=output.size_bytes)
        except TransientError as exc:  # the store cannot be reached: nothing concluded, nothing marked
            log.warning("job %s: output %s not checked (%s); rendering", job.id, output.uri, exc)
            return None
        mark = OutputMark(output.uri, "ok" if check.ok else check.state.value, output.file_sha256, check.detail,
                          check.actual_sha256, check.size_bytes)
        try:
            self.retry(f"recording the check of output {output.uri}", lambda: self.ledger.mark_outputs([mark]))
        except TransientError as exc:
            log.warning("job %s: output check not recorded (%s)", job.id, exc)
        if not check.ok:
            log.warning("job %s: not answered from job %s: its output is %s (%s); rendering", job.id, original.id,
                        check.state.value, check.detail)
            return None
        try:
            record = self.retry(f"recording cache hit for job {job.id}", lambda: self.ledger.record_cache_hit(
                job.id, original.id, worker_host=self.worker_host), durable=True)
        except IllegalTransition:
            return Outcome(job.id, OutcomeKind.DROPPED, None, "lost the job before recording")
        except TransientError as exc:
            return Outcome(job.id, OutcomeKind.UNRECORDED, None, f"{type(exc).__name__}: {exc}")
        log.info("job %s: answered from job %s (same job key and weights)", job.id, original.id)
        return Outcome(job.id, OutcomeKind.CACHE_HIT, record)

    # -- outcome handlers -----------------------------------------------------------------------
    def environment(self) -> dict[str, Any]:
        """The environment fingerprint recorded with every job (computed once)."""
        if self._env is None:
            from farm.engine.envinfo import environment_fingerprint

            self._env = environment_fingerprint(device=self.worker_device)
        return self._env

    def handle_success(
        self, job: JobRecord, result: RenderedJob, weights_fingerprint: str, load_s: float, *,
        degraded_reason: str | None = None,
    ) -> Outcome:
        """Store the render's output and record the success (with the timings and fingerprints).

        ``degraded_reason``: it rendered degraded under load; a render the engine degraded after
        running out of memory is recorded degraded too (neither answers another job).
        """
        effective = result.effective_params
        if result.degraded:
            oom = (f"out of memory: re-rendered at {effective.get('width')}x{effective.get('height')}, "
                   f"{effective.get('num_frames')} frames")
            degraded_reason = oom if degraded_reason is None else f"{degraded_reason}; {oom}"
        frames = result.frames
        assert frames is not None
        fps, output_format = int(effective["fps"]), str(effective["output_format"])
        # Returns once every file is in the store (an s3 store: uploaded and confirmed), so a job is
        # never recorded succeeded without its output. Durable: a finished render outlives a store outage.
        stored = self.retry(f"storing the output of job {job.id}",
                            lambda: self.store.put_render(frames, fps, job.job_key, output_format), durable=True)
        timings = {
            "load_s": round(load_s, 6),
            "render_s": round(float(result.stats.get("seconds", 0.0)), 6),
            "encode_s": round(stored.encode_seconds, 6),
            "stats": result.stats,
            "degraded": result.degraded,
            "output_reused": stored.reused,
        }
        if stored.quarantined is not None:
            timings["quarantined"] = str(stored.quarantined)
        try:
            record = self.retry(f"recording the success of job {job.id}", lambda: self.ledger.record_success(
                job.id,
                output_uri=stored.uri,
                file_sha256=stored.file_sha256,
                frames_sha256=stored.frames_sha256,
                effective_params=effective,
                weights_fingerprint=weights_fingerprint,
                env_fingerprint=self.environment(),
                timings=timings,
                worker_host=self.worker_host,
                size_bytes=stored.size_bytes,
                degraded_reason=degraded_reason,
            ), durable=True)
        except IllegalTransition:
            # Cancelled, or our lease expired and the job moved on: the output stays in the store
            # (content-addressed, so a later render of the same job finds the same file).
            log.warning("job %s: finished but no longer ours; output kept at %s", job.id, stored.uri)
            return Outcome(job.id, OutcomeKind.DROPPED, None, "lost the job before recording")
        except TransientError as exc:
            log.error("job %s: success not recorded (%s); output kept at %s, the reaper queues it again",
                      job.id, exc, stored.uri)
            return Outcome(job.id, OutcomeKind.UNRECORDED, None, f"{type(exc).__name__}: {exc}")
        return Outcome(job.id, OutcomeKind.SUCCEEDED, record)

    def handle_error(self, job: JobRecord, exc: BaseException) -> Outcome:
        """An attempt raised.

        :func:`farm.errors.classify` decides between a retry and a failure, and whether it counts
        against this worker.
        """
        verdict = classify(exc)
        if verdict.retry:
            return self.handle_retry(job, exc, worker_fault=verdict.worker_fault)
        return self.handle_failure(job, exc, worker_fault=verdict.worker_fault)

    def handle_failure(self, job: JobRecord, exc: BaseException, *, worker_fault: bool = False) -> Outcome:
        """A permanent error: the job fails at once with the reason."""
        log.error("job %s failed: %s: %s", job.id, type(exc).__name__, exc)
        return self._record_error(job, exc, retry=False, worker_fault=worker_fault)

    def handle_retry(self, job: JobRecord, exc: BaseException, *, worker_fault: bool = True) -> Outcome:
        """A transient (or unexpected) error: back to queued while attempts remain."""
        log.warning("job %s attempt %d failed: %s: %s", job.id, job.attempts, type(exc).__name__, exc)
        return self._record_error(job, exc, retry=True, worker_fault=worker_fault)

    def handle_cancelled(self, job: JobRecord, *, lost_lease: bool) -> Outcome:
        """A stopped render: nothing to record for a lost lease, hand it back at shutdown, else a retry."""
        if lost_lease:
            return Outcome(job.id, OutcomeKind.CANCELLED, None, "lease lost")
        if self.stop.is_set():
            return self.handle_release(job, "worker shutting down")
        # Stopped by the step callback for another reason: hand it back as a retry.
        return self._record_error(job, RenderCancelled("render stopped"), retry=True, worker_fault=False)

    def handle_release(self, job: JobRecord, reason: str) -> Outcome:
        """Hand a claimed job back (the attempt is not counted): shutdown."""
        try:
            record = self.retry(f"releasing job {job.id}", lambda: self.ledger.release(
                job.id, worker_host=self.worker_host, reason=reason), durable=True)
        except TransientError as exc:
            return Outcome(job.id, OutcomeKind.UNRECORDED, None, f"{type(exc).__name__}: {exc}")
        log.warning("job %s handed back: %s", job.id, reason)
        return Outcome(job.id, OutcomeKind.RELEASED if record is not None else OutcomeKind.DROPPED, record, reason)

    def _record_error(self, job: JobRecord, exc: BaseException, *, retry: bool, worker_fault: bool) -> Outcome:
        error_type = type(exc).__name__
        message = str(exc) or repr(exc)
        try:
            record = self.retry(f"recording the failure of job {job.id}", lambda: self.ledger.record_failure(
                job.id, error_type=error_type, error_message=message, retry=retry, worker_host=self.worker_host,
            ), durable=True)
        except IllegalTransition:
            return Outcome(job.id, OutcomeKind.DROPPED, None, str(exc))
        except TransientError as error:
            log.error("job %s: failure not recorded (%s)", job.id, error)
            return Outcome(job.id, OutcomeKind.UNRECORDED, None, f"{error_type}: {exc}")
        outcome = OutcomeKind.RETRY if record.status.value == "queued" else OutcomeKind.FAILED
        return Outcome(job.id, outcome, record, f"{error_type}: {exc}", worker_fault)


def build_runner(settings: Settings, ledger: Ledger, *, owner: str, device: str, retry: Retry = call_once,
                 before_render: BeforeRender | None = None) -> JobRunner:
    """The runner a worker process and ``farm render`` both use.

    The engine and the output store the settings name, the leases and phase batches they set.
    Imports torch (the engine).
    """
    from farm.engine.render import Engine
    from farm.store.writer import open_writer

    return JobRunner(
        ledger=ledger,
        engine=Engine.from_settings(settings),
        store=open_writer(settings),
        worker_host=owner,
        worker_device=device,
        lease_s=settings.lease_s,
        heartbeat_s=settings.heartbeat_s,
        phase_batch=settings.phase_batch,
        retry=retry,
        before_render=before_render,
        degrade=DegradePolicy.from_settings(settings),
    )
