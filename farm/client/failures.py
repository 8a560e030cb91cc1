"""The jobs of a wait that did not succeed: their ids, statuses and recorded errors.

Read through the client's reads (:class:`~farm.client.reads.ReadOps`, which
:class:`~farm.client.Client` inherits): a batch's failed and cancelled jobs with
``list_jobs(batch_id=..., status=...)``, a job id's own record with ``get_job``. Nothing here
writes.

Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from farm.errors import BatchNotFound, InvalidInput

if TYPE_CHECKING:
    from farm.client.reads import ReadOps
    from farm.ledger.records import JobRecord

#: The statuses listed, in this order: the failed jobs first, then the cancelled ones.
UNSUCCESSFUL: tuple[str, ...] = ("failed", "cancelled")
#: How many jobs :func:`unsuccessful_jobs` lists by default.
DEFAULT_LIMIT = 20
#: The most jobs of one batch and status read to put them in manifest order.
SCAN_LIMIT = 1000


@dataclass(frozen=True)
class Unsuccessful:
    """A job that failed or was cancelled, and the error its ledger record holds."""

    job_id: str
    status: str
    #: ``"ErrorType: message"`` as recorded (None: no error recorded, e.g. cancelled while queued).
    error: str | None


def _error_of(job: JobRecord) -> str | None:
    if job.error_type and job.error_message:
        return f"{job.error_type}: {job.error_message}"
    return job.error_type or job.error_message or None


def _entry(job: JobRecord) -> Unsuccessful:
    return Unsuccessful(job.id, job.status.value, _error_of(job))


def _split(reads: ReadOps, ids: Iterable[str]) -> tuple[list[str], list[JobRecord]]:
    """The batch ids among ``ids`` and the records of the job ids (:class:`JobNotFound`: neither)."""
    batches: list[str] = []
    jobs: list[JobRecord] = []
    for one in dict.fromkeys(ids):
        try:
            batches.append(reads.get_batch(one).id)
        except BatchNotFound:
            jobs.append(reads.get_job(one))
    return batches, jobs


def unsuccessful_jobs(reads: ReadOps, ids: Sequence[str], limit: int = DEFAULT_LIMIT) -> list[Unsuccessful]:
    """Up to ``limit`` failed, then cancelled, jobs of ``ids`` (jobs and/or batches), each job once.

    A batch's jobs come in manifest order (the first ``limit`` of at most :data:`SCAN_LIMIT` read
    per status: the ledger lists newest first). An unknown id
    is :class:`~farm.errors.JobNotFound`, as for :meth:`Client.status`. How many there are in all
    is in the group's :class:`~farm.client.StatusReport` counts.
    """
    if limit < 1:
        raise InvalidInput.one("limit", "min_1", f"must be at least 1, got {limit}")
    batches, jobs = _split(reads, ids)
    found: dict[str, Unsuccessful] = {}

    def add(candidates: Iterable[JobRecord]) -> None:
        for job in candidates:
            if len(found) < limit:
                found.setdefault(job.id, _entry(job))

    for status in UNSUCCESSFUL:
        add(j for j in jobs if j.status.value == status)
        for batch_id in batches:
            if len(found) >= limit:
                break
            listed = reads.list_jobs(batch_id=batch_id, status=status, limit=max(limit, SCAN_LIMIT))
            add(sorted(listed, key=lambda j: -1 if j.batch_index is None else j.batch_index)[:limit])
    return list(found.values())
