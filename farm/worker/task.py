"""The one Celery task, ``farm.render``: a job id in, :func:`farm.worker.runtime.process` does the work.

The task is thin on purpose: the message is only a wake-up. It checks that its one argument is a
job id (a UUID string) — anything else is rejected with a log line, never executed — and maps the
runtime's answers onto the message:

* done, dropped or failed for good → the message is acknowledged (the ledger has the outcome);
* a transient error (ledger unreachable through the retries, circuit breaker open) → the message
  is rejected *with requeue*: it goes back to the queue for this or another worker;
* an unknown job id → acknowledged and dropped, with a log line.

Only workers import this module (producers send by task name): it registers the task on the app
given to :func:`register`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject

from farm.errors import ExpectedError, TransientError
from farm.queue.names import TASK_RENDER

log = logging.getLogger(__name__)


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
        return "dropped"
    return outcomes[0].outcome if outcomes else "dropped"


def register(app: Celery) -> Task:
    """Register ``farm.render`` on ``app`` (workers only) and return the task."""
    task: Task = app.task(name=TASK_RENDER, bind=True, ignore_result=True, acks_late=True,
                          reject_on_worker_lost=True, typing=False)(render)
    return task
