"""The per-process worker runtime: what one ``farm worker`` process does with each message.

One :class:`WorkerRuntime` per worker process (Celery *solo* pool: no fork, the task runs in the
process that loaded the model). For each message (one job id):

1. if the circuit breaker is open, the message goes back to the queue (another worker takes it);
2. **claim** the job in the ledger; a job that is not claimable is dropped (its message acked):
   a duplicate, a redelivery past the visibility timeout while another worker renders it, a job
   already finished, cancelled or answered;
3. **claim_more** up to ``FARM_PHASE_BATCH - 1`` queued jobs with the same compat key to render
   together (for a batch job: interactive jobs first, then the oldest; an interactive job is
   batched only with interactive jobs); their own messages arrive later and are dropped. A job
   attempted before is never batched (poison isolation: see
   :meth:`farm.worker.runner.JobRunner.run_claimed`);
4. run them through :class:`farm.worker.runner.JobRunner` (built on the first job: the engine, and torch,
   are imported then), which heartbeats their leases from a background thread;
5. jobs that went back to queued (transient failure) get a fresh message at once; the circuit
   breaker counts failed jobs in a row and, at ``FARM_CIRCUIT_BREAKER_FAILURES``, cancels the
   worker's consumers, logs at CRITICAL and records ``state=circuit_open`` (the process stays up,
   visible in ``farm workers`` and Flower, instead of draining the queue into failures).

Background threads: the **reaper** (every ``FARM_REAP_INTERVAL_S``: expired leases, lost or
never-sent messages; see :func:`farm.queue.enqueue.reap`) and the **presence** beat (the
``workers`` row, every ``FARM_HEARTBEAT_S``).

Transient errors (ledger, broker, storage) are retried with exponential backoff, jitter and a cap
(:func:`farm.queue.enqueue.retrying`); recording an outcome whose output is already stored keeps
retrying for at least :data:`DURABLE_RETRY_MIN_S` (or the lease, if longer), so a ledger outage of
that length loses nothing.

Shutdown (SIGTERM): Celery's warm shutdown lets the current task finish. If it is still rendering
``stop_timeout_s`` later, the render is stopped at its next step and its jobs are handed back with
``ledger.release`` (the attempt not counted) and sent again, before the process exits.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from farm.errors import ExpectedError, TransientError
from farm.ledger import JobRecord, Ledger
from farm.queue.enqueue import reap, retrying, send_jobs
from farm.settings import Settings, process_environment
from farm.worker.main import DEFAULT_STOP_TIMEOUT_S
from farm.worker.metrics import WorkerMetrics, metrics_port
from farm.worker.runner import JobRunner, Outcome, OutcomeKind, build_runner

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Recording an outcome whose output is stored retries at least this long (or the lease).
DURABLE_RETRY_MIN_S = 120.0


class CircuitOpen(TransientError):
    """This worker stopped taking work (too many failed jobs in a row): the message goes back."""


@dataclass(frozen=True)
class WorkerConfig:
    """Who a worker process is and what it consumes."""

    settings: Settings
    #: The Celery node name, e.g. ``farm-gpu3@host`` (also the ``workers`` row's name).
    hostname: str
    #: The device as the operator named it (``cuda:3``, ``cpu``): recorded with each job.
    device: str
    queues: tuple[str, ...]
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
    pid: int = field(default_factory=os.getpid)
    #: The models it serves (their weights verified at start): the routes of ``queues``.
    models: tuple[str, ...] | None = None
    #: Free-form tags it declares (``h200``, ``4090``).
    tags: tuple[str, ...] = ()
    #: Total memory of its device in MiB (None: unknown).
    device_memory_mb: int | None = None

    @property
    def owner(self) -> str:
        """The lease owner recorded with claimed jobs: the node name, stable across restarts.

        A restarted worker never takes over its predecessor's jobs: it claims queued jobs only,
        and heartbeats and records only the jobs it claimed itself.
        """
        return self.hostname


class WorkerRuntime:
    """Per-process state of a worker (see the module docstring)."""

    def __init__(self, config: WorkerConfig, app: Celery):
        self.config = config
        self.settings = config.settings
        self.app = app
        self._ledger: Ledger | None = None
        self._runner: JobRunner | None = None
        self._lock = threading.Lock()
        self._runner_lock = threading.Lock()
        self._consumer: Any = None
        self._background = threading.Event()
        #: Set when the workers row should be written now (a state change); the presence thread waits on it.
        self._presence_due = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stop_timer: threading.Timer | None = None
        #: Queued jobs the reaper found unsent at its last pass (sent at the next if still unsent).
        self._unsent: set[str] = set()
        self.state = "starting"
        self.circuit_open = False
        self.circuit_reason: str | None = None
        self.consecutive_failures = 0
        self.jobs_succeeded = 0
        self.jobs_failed = 0
        #: Prometheus counters, when FARM_WORKER_METRICS_PORT is set (see farm.worker.metrics).
        self.metrics: WorkerMetrics | None = None

    # -- lazily built parts ------------------------------------------------------------------
    @property
    def ledger(self) -> Ledger:
        """The worker's ledger, opened at first use."""
        with self._lock:
            if self._ledger is None:
                # No pre-ping: every ledger call of the worker is retried (see retry()).
                self._ledger = Ledger(self.settings.ledger_url, echo=self.settings.sql_echo, pre_ping=False)
            return self._ledger

    @property
    def runner(self) -> JobRunner:
        """The job runner, built on the first job in this process (the engine imports torch)."""
        with self._runner_lock:
            if self._runner is None:
                self._runner = self._build_runner()
            return self._runner

    def _build_runner(self) -> JobRunner:
        from farm.worker.faults import make_hook

        if self.settings.fault_injection:
            log.warning("fault injection is ON (FARM_FAULT_INJECTION): jobs tagged 'fault' misbehave on purpose")
        return build_runner(self.settings, self.ledger, owner=self.config.owner, device=self.config.device,
                            retry=self.retry, before_render=make_hook(self.settings.fault_injection))

    # -- retries ------------------------------------------------------------------------------
    def retry(self, what: str, fn: Callable[[], T], *, durable: bool = False) -> T:
        """Call ``fn``, retrying transient errors with backoff.

        ``durable``: at least :data:`DURABLE_RETRY_MIN_S` or the lease, whichever is
        longer.
        """
        minimum = max(DURABLE_RETRY_MIN_S, float(self.settings.lease_s)) if durable else None
        return retrying(self.settings, what=what, min_total_s=minimum)(fn)

    # -- one message --------------------------------------------------------------------------
    def process(self, job_id: str) -> list[Outcome]:
        """Handle the message for ``job_id`` (see the module docstring).

        Raises :class:`CircuitOpen` or another :class:`~farm.errors.TransientError` when the
        message should go back to the queue; :class:`~farm.errors.JobNotFound` for an unknown
        job.
        """
        if self.circuit_open:
            raise CircuitOpen(f"circuit breaker open: {self.circuit_reason}")
        try:
            runner = self.runner
        except Exception as exc:  # the engine cannot start here (no CUDA, bad settings): stop consuming
            self._open_circuit(f"the render engine could not start: {type(exc).__name__}: {exc}")
            raise CircuitOpen(str(exc)) from exc
        try:
            claimed = self._claim(job_id)
            if not claimed:
                return [Outcome(job_id, OutcomeKind.DROPPED)]
            self._set_state("busy")
            try:
                outcomes = runner.run_claimed(claimed)
            finally:
                if self.state == "busy":
                    self.state = "idle"  # written by _after (or the presence thread)
        except (TransientError, ExpectedError):
            raise
        except Exception as exc:  # a bug: count it, so that a worker that always fails stops consuming
            self._count([Outcome(job_id, OutcomeKind.FAILED, None, f"{type(exc).__name__}: {exc}", worker_fault=True)])
            raise
        self._after(outcomes)
        return outcomes

    def _claim(self, job_id: str) -> list[JobRecord]:
        claimed = self.runner.claim_group(job_id)
        if not claimed:
            self._log_drop(job_id)
            return []
        log.info("claimed job %s (attempt %d)%s", job_id, claimed[0].attempts,
                 f" and {len(claimed) - 1} compatible job(s)" if len(claimed) > 1 else "")
        return claimed

    def _log_drop(self, job_id: str) -> None:
        try:
            job = self.ledger.get_job(job_id)
        except Exception as exc:
            log.info("job %s not claimable: message dropped (%s)", job_id, exc)
            return
        where = ""
        if job.status.value == "running" and job.lease_expires_at is not None:
            where = f" by {job.worker_host}, lease until {job.lease_expires_at:%H:%M:%S}"
        elif job.follower:
            where = f" behind leader {job.cache_of_job_id}"
        log.info("job %s not claimable (status %s%s): message dropped", job_id, job.status.value, where)

    def _after(self, outcomes: list[Outcome]) -> None:
        requeued = [o.job_id for o in outcomes if o.outcome in (OutcomeKind.RETRY, OutcomeKind.RELEASED)]
        if requeued:
            self._send_again(requeued)
        self._count(outcomes)

    def _count(self, outcomes: list[Outcome]) -> None:
        """The circuit breaker's count: jobs failed in a row *by this worker's fault*.

        A success resets it; a job's own problem, such as a refused output location, neither
        counts nor resets: it says nothing about the worker.
        """
        for o in outcomes:
            if o.outcome in (OutcomeKind.SUCCEEDED, OutcomeKind.CACHE_HIT):
                self.consecutive_failures = 0
                self.jobs_succeeded += 1
            elif o.outcome in (OutcomeKind.FAILED, OutcomeKind.RETRY):
                self.jobs_failed += 1
                if o.worker_fault:
                    self.consecutive_failures += 1
        limit = self.settings.circuit_breaker_failures
        if self.consecutive_failures >= limit and not self.circuit_open:
            last = next((o.error for o in reversed(outcomes) if o.error), "")
            self._open_circuit(f"{self.consecutive_failures} failed jobs in a row (last: {last})")
        if self.metrics is not None:
            self.metrics.observe(outcomes, consecutive_failures=self.consecutive_failures,
                                 circuit_open=self.circuit_open)

    def _send_again(self, job_ids: list[str]) -> None:
        """Send fresh messages for jobs that went back to queued.

        Best effort: the reaper sends whatever this misses.
        """
        try:
            pending = self.ledger.jobs_to_enqueue(job_ids=job_ids)
            send_jobs(self.ledger, pending, app=self.app, settings=self.settings, attempts=1)
        except Exception as exc:
            log.warning("jobs %s not sent again now (%s): the reaper will", ", ".join(job_ids), exc)

    # -- circuit breaker ----------------------------------------------------------------------
    def _open_circuit(self, reason: str) -> None:
        self.circuit_open = True
        self.circuit_reason = reason
        log.critical("circuit breaker OPEN on %s: %s. No longer consuming from %s; the worker stays up "
                     "(restart it once the cause is fixed)", self.config.hostname, reason,
                     ", ".join(self.config.queues))
        self.cancel_consumers()
        self._set_state("circuit_open")

    def attach_consumer(self, consumer: Any) -> None:
        """Called by the worker's consumer bootstep: lets the breaker cancel the consumers."""
        self._consumer = consumer
        if self.circuit_open:
            self.cancel_consumers()

    def cancel_consumers(self) -> None:
        """Stop consuming from the worker's queues (the breaker opened)."""
        consumer = self._consumer
        if consumer is None:
            return
        for queue in self.config.queues:
            # What the cancel_consumer remote-control command does, scheduled on the worker's loop.
            consumer.call_soon(consumer.cancel_task_queue, queue)

    # -- presence (the workers table) ---------------------------------------------------------
    def _set_state(self, state: str) -> None:
        """Change the worker's state.

        ``busy``/``idle`` flip with every job: the presence thread records them at its next beat
        (``FARM_HEARTBEAT_S``), off the job's path; the states an operator must see at once
        (``circuit_open``, ``stopped``, the first ``idle``) are written now.
        """
        first = self.state == "starting"
        self.state = state
        if first or state in ("circuit_open", "stopped"):
            self._seen_quietly()

    def _seen(self) -> None:
        detail: dict[str, Any] = {"queues": list(self.config.queues), "owner": self.config.owner}
        if self.config.device_memory_mb is not None:
            detail["device_memory_mb"] = self.config.device_memory_mb
        if self.circuit_reason:
            detail["circuit_reason"] = self.circuit_reason
        try:
            self.ledger.worker_seen(
                self.config.hostname, host=socket.gethostname(), device=self.config.device, pid=self.config.pid,
                state=self.state, consecutive_failures=self.consecutive_failures,
                jobs_succeeded=self.jobs_succeeded, jobs_failed=self.jobs_failed, detail=detail,
                models=self.config.models, tags=self.config.tags,
            )
        except TransientError:
            raise
        except Exception as exc:
            log.warning("workers row not updated (%s)", exc)

    def _seen_quietly(self) -> None:
        """:meth:`_seen` from the message path.

        While the presence thread runs it writes the row at once in the background (the job's
        path never waits on it, and a ledger outage is its to report); before it starts or after
        shutdown, here and now.
        """
        if self._threads and not self._background.is_set():
            self._presence_due.set()
            return
        try:
            self._seen()
        except TransientError as exc:
            log.debug("workers row not updated (%s)", exc)

    # -- background threads -------------------------------------------------------------------
    def start_background(self) -> None:
        """Start the reaper and presence threads (once the worker is ready)."""
        if self._threads:
            return
        visible = process_environment().get("CUDA_VISIBLE_DEVICES")
        log.info("farm worker %s: device %s (torch device %s, CUDA_VISIBLE_DEVICES=%r), queues %s, lease %d s",
                 self.config.hostname, self.config.device, self.settings.device, visible,
                 ", ".join(self.config.queues), self.settings.lease_s)
        self._clean_store()
        if self.state == "starting":
            self._set_state("idle")
        port = self.settings.worker_metrics_port
        if port is not None and self.metrics is None:
            self.metrics = WorkerMetrics(self.config.hostname, self.config.device)
            self.metrics.serve(self.settings.worker_metrics_host, metrics_port(port, self.config.device))
        for name, interval, fn, wake in (
            ("farm-reaper", self.settings.reap_interval_s, self.reap_once, None),
            ("farm-presence", float(self.settings.heartbeat_s), self._seen, self._presence_due),
        ):
            thread = threading.Thread(target=self._every, args=(interval, fn, wake), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _clean_store(self) -> None:
        """Remove the temporary files of writers that died (a crashed worker leaves them)."""
        from farm.store import OutputStore

        try:
            removed = OutputStore(self.settings.outputs_path).clean_temp()
        except OSError as exc:
            log.warning("output store: temporary files not cleaned (%s)", exc)
            return
        if removed:
            log.info("output store: removed %d temporary entr(y/ies) left by dead writers", removed)

    def _every(self, interval: float, fn: Callable[[], object], wake: threading.Event | None = None) -> None:
        """Call ``fn`` every ``interval`` seconds, and at once whenever ``wake`` is set, until shutdown.

        The interval is jittered, so that workers started together do not reap in lockstep; a
        transient failure is logged once per outage.
        """
        name = threading.current_thread().name
        failing = False
        while True:
            pause = interval * random.uniform(0.8, 1.2)  # noqa: S311
            if wake is None:
                if self._background.wait(pause):
                    break
            else:
                wake.wait(pause)
                wake.clear()
                if self._background.is_set():
                    break
            try:
                fn()
            except TransientError as exc:
                log.log(logging.DEBUG if failing else logging.WARNING, "%s: %s (retrying every %.0f s)",
                        name, exc, interval)
                failing = True
                continue
            except Exception:
                log.exception("%s failed", name)
                continue
            if failing:
                log.warning("%s: working again", name)
                failing = False

    def reap_once(self) -> None:
        """One reaper pass; jobs it deferred are sent by the next pass if still unsent."""
        report = reap(self.ledger, self.settings, app=self.app, previous=self._unsent)
        self._unsent = set(report.deferred)
        if report.error:
            log.warning("reaper: %s", report.error)

    # -- shutdown -----------------------------------------------------------------------------
    def on_shutting_down(self) -> None:
        """Warm shutdown began (SIGTERM).

        The current task may finish; past ``stop_timeout_s`` its render stops and its jobs are
        handed back.
        """
        if self._stop_timer is not None:
            return
        if self.state == "busy":
            log.warning("shutting down: the current render may finish within %.0f s, then it is handed back",
                        self.config.stop_timeout_s)
        self._stop_timer = threading.Timer(self.config.stop_timeout_s, self._deadline)
        self._stop_timer.daemon = True
        self._stop_timer.start()

    def _deadline(self) -> None:
        runner = self._runner
        if runner is not None and self.state == "busy":
            log.warning("shutdown deadline passed: stopping the render and handing its jobs back")
            runner.stop.set()

    def on_shutdown(self) -> None:
        """The worker stopped: stop the threads and record the state."""
        self._background.set()
        self._presence_due.set()  # the presence thread ends; the last state is written here
        if self._stop_timer is not None:
            self._stop_timer.cancel()
        self._set_state("stopped")
        if self._ledger is not None:
            self._ledger.close()


_runtime: WorkerRuntime | None = None


def configure(config: WorkerConfig, app: Celery) -> WorkerRuntime:
    """Create this process's runtime and wire it into the Celery app (consumer bootstep and worker signals).

    Call once per worker process, before ``app.Worker(...).start()``.
    """
    global _runtime
    runtime = WorkerRuntime(config, app)
    _runtime = runtime
    _wire(app, runtime)
    return runtime


def current() -> WorkerRuntime:
    """This process's runtime (the task calls it)."""
    if _runtime is None:
        raise RuntimeError("farm.worker.runtime.configure() was not called in this process")
    return _runtime


def process(job_id: str) -> list[Outcome]:
    """Handle one message: see :meth:`WorkerRuntime.process`."""
    return current().process(job_id)


def _wire(app: Celery, runtime: WorkerRuntime) -> None:
    from celery import bootsteps, signals

    class ConsumerRef(bootsteps.StartStopStep):  # type: ignore[misc]  # celery has no type hints: the base is Any
        """Hands the worker's consumer to the runtime (the circuit breaker cancels its queues)."""

        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, c: Any) -> None:
            runtime.attach_consumer(c)

    app.steps["consumer"].add(ConsumerRef)

    def ready(**_: Any) -> None:
        runtime.start_background()

    def shutting_down(**_: Any) -> None:
        runtime.on_shutting_down()

    def shutdown(**_: Any) -> None:
        runtime.on_shutdown()

    signals.worker_ready.connect(ready, weak=False)
    signals.worker_shutting_down.connect(shutting_down, weak=False)
    signals.worker_shutdown.connect(shutdown, weak=False)
