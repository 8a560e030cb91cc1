"""The ledger gateway's upkeep writes: outputs' integrity, the models' fingerprints, the workers' presence.

None of them changes a job's status. :class:`farm.ledger.manager.Ledger` inherits them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import insert, select, update

from farm.ledger import outputs as o
from farm.ledger import queueing as q
from farm.ledger.base import LedgerBase
from farm.ledger.models import events, jobs, outputs
from farm.ledger.records import OutputMark
from farm.ledger.status import JobStatus


class LedgerUpkeep(LedgerBase):
    """Output marks and hash repairs, model registrations, worker presence."""

    # -- outputs -------------------------------------------------------------------------------
    def mark_outputs(self, marks: Sequence[OutputMark]) -> list[str]:
        """Record what output checks found; return the URIs whose state changed.

        ``ok`` refreshes the verified stamp; ``missing`` and ``corrupt`` keep the cache off the
        file. Each change is an event on the jobs that point at it. See
        :mod:`farm.ledger.outputs`.
        """
        if not marks:
            return []
        with self._write() as conn:
            return o.mark(conn, marks, self._now())

    def replace_output_hash(self, uri: str, file_sha256: str, *, reason: str) -> list[str]:
        """A repair wrote new bytes for the same frames (another ffmpeg build).

        The output's and its jobs' ``file_sha256`` become the new file's (each job gets an
        ``output-rewritten`` event with the old and new hash). Returns the ids of the jobs changed.
        """
        now = self._now()
        with self._write() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.file_sha256).where(
                    jobs.c.output_uri == uri, jobs.c.status == JobStatus.SUCCEEDED.value,
                    jobs.c.file_sha256 != file_sha256)
            ).all()
            for job_id, old in rows:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(file_sha256=file_sha256))
                conn.execute(insert(events).values(
                    job_id=job_id, at=now, from_status=JobStatus.SUCCEEDED.value,
                    to_status=JobStatus.SUCCEEDED.value, kind="output-rewritten", worker=None,
                    detail={"uri": uri, "old_file_sha256": old, "new_file_sha256": file_sha256, "reason": reason}))
            conn.execute(update(outputs).where(outputs.c.uri == uri).values(file_sha256=file_sha256))
            return [job_id for job_id, _ in rows]

    # -- models and workers --------------------------------------------------------------------
    def register_model(self, name: str, weights_fingerprint: str, *, worker: str | None) -> None:
        """Record the weights fingerprint ``name`` is loaded with (upsert).

        Outputs rendered with it answer new jobs as cache hits.
        """
        if not weights_fingerprint:
            raise ValueError("weights_fingerprint must not be empty")
        with self._write() as conn:
            q.upsert_model(conn, {"name": name, "weights_fingerprint": weights_fingerprint,
                                  "updated_at": self._now(), "worker": worker})

    def worker_seen(self, name: str, *, host: str, device: str, pid: int, state: str, consecutive_failures: int = 0,
                    jobs_succeeded: int = 0, jobs_failed: int = 0, detail: Mapping[str, Any] | None = None,
                    models: Sequence[str] | None = None, tags: Sequence[str] | None = None) -> None:
        """Insert or update the worker ``name`` with these fields and ``last_seen_at`` = now.

        ``started_at`` is set when it first appears, reports ``starting`` or a new pid. ``models``:
        the models it serves (None: unknown, every model); ``tags``: its declared tags.
        """
        values = q.worker_values(
            name, self._now(), host=host, device=device, pid=pid, state=state, detail=detail,
            consecutive_failures=consecutive_failures, jobs_succeeded=jobs_succeeded, jobs_failed=jobs_failed,
            models=None if models is None else list(models), tags=None if tags is None else list(tags),
        )
        with self._write() as conn:
            q.upsert_worker(conn, values)

