"""The job status machine.

The statuses (their values are the strings stored in the ledger) and the transitions between
them.

::

    queued ──► running ──► succeeded
      │  ▲        │  └───► failed
      │  └────────┤        (running ──► queued: retry, lease expired, hand-back)
      │           └──────► cancelled
      ├──────────────────► cancelled
      └──────────────────► succeeded   (reserved: a cache hit answered without rendering)

``queued -> succeeded`` exists for jobs answered from another job's output (the job's
``cache_of_job_id`` names that job); no render happens, so the job never runs.

Only :meth:`farm.ledger.manager.Ledger.transition` changes a status, and only along these edges.
Torch- and SQLAlchemy-free.
"""

from __future__ import annotations

from enum import StrEnum

from farm.kinds import Priority, WorkerState, values


class JobStatus(StrEnum):
    """The status of a job (the value is what the ledger stores)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for the final statuses: succeeded, failed, cancelled."""
        return self in TERMINAL


#: Statuses a job never leaves.
TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

#: Every allowed (from, to) edge.
TRANSITIONS: frozenset[tuple[JobStatus, JobStatus]] = frozenset(
    {
        (JobStatus.QUEUED, JobStatus.RUNNING),
        (JobStatus.QUEUED, JobStatus.CANCELLED),
        (JobStatus.QUEUED, JobStatus.SUCCEEDED),  # cache hit, no render (see module docstring)
        (JobStatus.RUNNING, JobStatus.SUCCEEDED),
        (JobStatus.RUNNING, JobStatus.FAILED),
        (JobStatus.RUNNING, JobStatus.CANCELLED),
        (JobStatus.RUNNING, JobStatus.QUEUED),  # retry, lease expired, hand-back
    }
)

#: The status every new job starts in.
INITIAL = JobStatus.QUEUED


def is_allowed(current: JobStatus | str, target: JobStatus | str) -> bool:
    """True when ``current -> target`` is an edge of the machine."""
    return (JobStatus(current), JobStatus(target)) in TRANSITIONS


def allowed_from(target: JobStatus | str) -> frozenset[JobStatus]:
    """The statuses from which a job may move to ``target``."""
    to = JobStatus(target)
    return frozenset(a for a, b in TRANSITIONS if b == to)


def parse_status(value: str) -> JobStatus:
    """A :class:`JobStatus` from its string; ``ValueError`` naming the valid ones otherwise."""
    try:
        return JobStatus(value)
    except ValueError:
        valid = ", ".join(s.value for s in JobStatus)
        raise ValueError(f"unknown job status {value!r}; valid: {valid}") from None


#: Priorities a job may have (the strings stored in the ledger).
PRIORITIES: tuple[str, ...] = values(Priority)


#: States a worker reports in the ``workers`` table.
WORKER_STATES: tuple[str, ...] = values(WorkerState)


#: States of a stored output (``outputs.state``): only ``ok`` outputs answer cache hits.
OUTPUT_STATES: tuple[str, ...] = ("ok", "missing", "corrupt")
