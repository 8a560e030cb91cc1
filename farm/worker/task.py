"""The one Celery task, ``farm.render``: a job id in, :func:`farm.worker.runtime.process` does the work.

The task is thin on purpose: the message is only a wake-up. It checks that its one argument is a
job id (a UUID string) — anything else is rejected with a log line, never executed — and maps the
runtime's answers onto the message:

* done, dropped or failed for good → the message is acknowledged (the ledger has the outcome);
* a transient error (ledger unreachable through the retries, circuit breaker open) → the message
  is rejected *with requeue*: it goes back to the queue for this or another worker;
* an unknown job id → acknowledged and dropped, with a log line.

Celery's task state tells the truth about the message's own job (what Flower shows): SUCCESS when
it succeeded (or was answered from the cache); FAILURE (:class:`RenderFailed`, logged without a
traceback) when it failed or was cancelled; RETRIED when it went back to the queue (a transient
failure, a hand-back); REVOKED, with no runtime, when the message was dropped (a redelivery, a job
already finished or rendered in another's phase batch), so duplicates never count as renders in
the runtime statistics.

Only workers import this module (producers send by task name): it registers the task on the app
given to :func:`register`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore, Reject

from farm.errors import ExpectedError, TransientError
from farm.queue.names import TASK_RENDER

log = logging.getLogger(__name__)

#: Outcomes after which the job is queued again (its message's state: RETRIED).
REQUEUED_OUTCOMES = frozenset({"retry", "released", "unrecorded"})
#: Outcomes that end the job without its output (its message's state: FAILURE).
FAILED_OUTCOMES = frozenset({"failed", "cancelled"})


class RenderFailed(Exception):
    """The message's job failed or was cancelled: the task's state is FAILURE (the ledger has why)."""


def job_id_from_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The job id if the message carries exactly one canonical UUID string, else None."""
    if kwargs or len(args) != 1 or not isinstance(args[0], str):
        return None
    text = args[0]
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return None
    return text if str(parsed) == text.lower() and len(text) == 36 else None


def render(task: Task, *args: Any, **kwargs: Any) -> str:
    """The body of ``farm.render`` (see the module docstring). Returns the first job's outcome."""
    from farm.worker.runtime import process

    delivery = getattr(task.request, "delivery_info", None) or {}
    job_id = job_id_from_args(args, kwargs)
    if job_id is None:
        log.error("message %s on %s refused: farm.render takes one job id (a UUID string), got args=%.200r "
                  "kwargs=%.200r", task.request.id, delivery.get("routing_key"), args, kwargs)
        raise Reject("not a job id", requeue=False)
    try:
        outcomes = process(job_id)
    except TransientError as exc:
        log.warning("job %s: message goes back to the queue: %s", job_id, exc)
        raise Reject(str(exc), requeue=True) from exc
    except ExpectedError as exc:
        log.error("job %s: message dropped: %s: %s", job_id, type(exc).__name__, exc)
        outcomes = []
    own = next((o for o in outcomes if o.job_id == job_id), None)
    return settle(task, job_id, "dropped" if own is None else own.outcome.value, None if own is None else own.error)


def settle(task: Task, job_id: str, outcome: str, error: str | None = None) -> str:
    """Turn the job's outcome into the message's task state (see the module docstring)."""
    if outcome in FAILED_OUTCOMES:
        raise RenderFailed(f"job {job_id} {outcome}" + (f": {error}" if error else ""))
    if outcome in REQUEUED_OUTCOMES:
        _event(task, "task-retried", exception=f"job {job_id} {outcome}: queued again", traceback="")
        raise Ignore()
    if outcome == "dropped":
        _event(task, "task-revoked", terminated=False, signum=None, expired=False)
        raise Ignore()
    return outcome


def _event(task: Task, kind: str, **fields: Any) -> None:
    """Send a task event about the current message (best effort: a lost event only dims Flower)."""
    try:
        task.send_event(kind, retry=False, **fields)
    except Exception as exc:
        log.debug("event %s not sent: %s", kind, exc)


def register(app: Celery) -> Task:
    """Register ``farm.render`` on ``app`` (workers only) and return the task."""
    task: Task = app.task(name=TASK_RENDER, bind=True, ignore_result=True, acks_late=True,
                          reject_on_worker_lost=True, typing=False, throws=(RenderFailed,))(render)
    return task
