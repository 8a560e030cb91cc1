"""The ledger gateway's reads.

Jobs, batches, events, outputs, workers, the enqueue backlog, the pace of a group and the
done-listener. :class:`farm.ledger.manager.Ledger` inherits them: every read of the ledger still
goes through that one gateway.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import Text, bindparam, cast, func, literal, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from farm.errors import BatchNotFound, JobNotFound
from farm.ledger import db, direct, stats
from farm.ledger import outputs as o
from farm.ledger import queueing as q
from farm.ledger.base import LedgerBase
from farm.ledger.models import batches, events, jobs, models, outputs, workers
from farm.ledger.notify import DoneListener
from farm.ledger.records import BatchRecord, EventRecord, JobProgress, JobRecord, OutputRecord, WorkerRecord
from farm.ledger.status import JobStatus, parse_status

#: LIKE's escape character, and the characters it escapes (the wildcards and itself).
_LIKE_ESCAPE = "/"
_LIKE_SPECIAL = frozenset("%_/")


def _job_filters(*, batch_id: str | None, status: JobStatus | str | None, starred: bool | None,
                 tag: tuple[str, str | None] | None, label: str | None,
                 prompt: str | None) -> list[ColumnElement[bool]]:
    """The WHERE clauses of :meth:`LedgerReads.list_jobs` (the same SQL meaning on SQLite and Postgres).

    Tags: a JSON path into ``jobs.tags`` (``json_extract`` on SQLite, ``->>`` on Postgres). Labels:
    ``"label"`` (quotes included) in the JSON text of ``jobs.labels`` -- exact, because a label
    never holds a quote, and LIKE's wildcards are escaped.
    """
    where: list[ColumnElement[bool]] = []
    if batch_id is not None:
        where.append(jobs.c.batch_id == batch_id)
    if status is not None:
        where.append(jobs.c.status == parse_status(str(status)).value)
    if starred is not None:
        where.append(jobs.c.starred == starred)
    if tag is not None:
        key, value = tag
        found = jobs.c.tags[key].as_string()
        where.append(found.is_not(None) if value is None else found == value)
    if label is not None:
        if '"' in label or "\\" in label:
            raise ValueError("a label never holds a quote or a backslash")
        where.append(cast(jobs.c.labels, Text).contains(f'"{label}"', autoescape=True))
    if prompt is not None:
        needle = "".join(_LIKE_ESCAPE + c if c in _LIKE_SPECIAL else c for c in prompt)
        pattern = literal("%") + func.lower(literal(needle)) + literal("%")
        where.append(func.lower(jobs.c.prompt).like(pattern, escape=_LIKE_ESCAPE))
    return where


#: The read behind :meth:`LedgerReads.job_progress` (built once).
_PROGRESS = select(jobs.c.status, jobs.c.progress, jobs.c.started_at).where(jobs.c.id == bindparam("job_id"))


class LedgerReads(LedgerBase):
    """Reading the ledger (see the module docstring)."""

    def get_job(self, job_id: str) -> JobRecord:
        """The job ``job_id``; :class:`JobNotFound` when there is none."""
        with self._read() as conn:
            return self._job(conn, job_id)

    def job_progress(self, job_id: str) -> JobProgress:
        """The job's status, progress and start: a narrow read (what a status report and a wait need).

        :class:`JobNotFound` when there is none.
        """
        with self._read() as conn:
            row = direct.first(conn, _PROGRESS, {"job_id": job_id})
        if row is None:
            raise JobNotFound(job_id)
        return JobProgress(job_id, JobStatus(row["status"]), float(row["progress"]), row["started_at"])

    @staticmethod
    def _job(conn: Connection, job_id: str) -> JobRecord:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise JobNotFound(job_id)
        return JobRecord.from_row(row)

    def batch_jobs(self, batch_id: str) -> list[JobRecord]:
        """Every job of the batch in ``batch_index`` order. :class:`BatchNotFound` if unknown."""
        with self._read() as conn:
            if conn.execute(select(batches.c.id).where(batches.c.id == batch_id)).first() is None:
                raise BatchNotFound(batch_id)
            return [JobRecord.from_row(r) for r in conn.execute(q.in_batch_order(batch_id)).mappings()]

    def succeeded_jobs(self, batch_id: str | None = None) -> list[JobRecord]:
        """Succeeded jobs (cache hits included), of one batch or all, in batch_index / creation order."""
        query = q.in_batch_order(batch_id, status=JobStatus.SUCCEEDED)
        with self._read() as conn:
            return [JobRecord.from_row(r) for r in conn.execute(query).mappings()]

    def list_jobs(
        self,
        batch_id: str | None = None,
        status: JobStatus | str | None = None,
        limit: int = 100,
        offset: int = 0,
        starred: bool | None = None,
        *,
        tag: tuple[str, str | None] | None = None,
        label: str | None = None,
        prompt: str | None = None,
    ) -> list[JobRecord]:
        """Jobs, newest first (ties by id), filtered by every filter given.

        ``batch_id``: of one batch; ``status``: in one status; ``starred``: only the starred
        (True) or only the unstarred (False); ``tag``: ``(key, value)`` whose spec tag ``key`` is
        ``value``, or ``(key, None)`` that have the tag at all; ``label``: carrying this review
        label; ``prompt``: whose prompt contains this text, ignoring case (the database's
        ``lower()`` on both sides: ASCII letters on every backend, more where the database's
        locale knows them; SQLite's knows ASCII only).
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        query = select(jobs).where(*_job_filters(batch_id=batch_id, status=status, starred=starred, tag=tag,
                                                 label=label, prompt=prompt))
        query = query.order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit).offset(offset)
        with self._read() as conn:
            return [JobRecord.from_row(r) for r in conn.execute(query).mappings()]

    def list_batches(self, limit: int = 100, offset: int = 0) -> list[tuple[BatchRecord, dict[JobStatus, int]]]:
        """Batches, newest first (ties by id), each with how many of its jobs are in each status (zeros too)."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        query = select(batches).order_by(batches.c.created_at.desc(), batches.c.id).limit(limit).offset(offset)
        with self._read() as conn:
            found = [BatchRecord.from_row(r) for r in conn.execute(query).mappings()]
            counts: dict[str, dict[JobStatus, int]] = {b.id: dict.fromkeys(JobStatus, 0) for b in found}
            for part in q.chunks(list(counts)):
                per_status = (select(jobs.c.batch_id, jobs.c.status, func.count())
                              .where(jobs.c.batch_id.in_(part)).group_by(jobs.c.batch_id, jobs.c.status))
                for batch_id, status, n in conn.execute(per_status):
                    counts[batch_id][JobStatus(status)] = int(n)
        return [(b, counts[b.id]) for b in found]

    def get_batch(self, batch_id: str) -> BatchRecord:
        """The batch ``batch_id``; :class:`BatchNotFound` when there is none."""
        with self._read() as conn:
            row = conn.execute(select(batches).where(batches.c.id == batch_id)).mappings().first()
        if row is None:
            raise BatchNotFound(batch_id)
        return BatchRecord.from_row(row)

    def find_batch_by_digest(self, manifest_digest: str) -> BatchRecord | None:
        """The batch made from the manifest with this digest, or None."""
        with self._read() as conn:
            query = select(batches).where(batches.c.manifest_digest == manifest_digest)
            row = conn.execute(query).mappings().first()
        return None if row is None else BatchRecord.from_row(row)

    def batch_counts(self, batch_id: str) -> dict[JobStatus, int]:
        """How many of the batch's jobs are in each status (every status present, zeros too)."""
        with self._read() as conn:
            if conn.execute(select(batches.c.id).where(batches.c.id == batch_id)).first() is None:
                raise BatchNotFound(batch_id)
            query = (
                select(jobs.c.status, func.count())
                .where(jobs.c.batch_id == batch_id)
                .group_by(jobs.c.status)
            )
            found = {JobStatus(s): int(n) for s, n in conn.execute(query)}
        return {s: found.get(s, 0) for s in JobStatus}

    @contextmanager
    def listen(self) -> Iterator[DoneListener]:
        """A started :class:`~farm.ledger.notify.DoneListener` on this ledger, for one wait.

        Start it before reading the statuses you wait on. Its connection is kept for the next
        wait (one idle listener per ledger, closed by :meth:`close`); a listener whose connection
        failed is closed, not kept.
        """
        if self.backend != "postgresql":
            yield DoneListener(None)
            return
        with self._listener_lock:
            listener, self._idle_listener = self._idle_listener, None
        if listener is None:
            listener = DoneListener(db.libpq_url(self.url))
        healthy = False
        try:
            with self._guard():
                listener.start()
            yield listener
            with self._guard():
                listener.stop()
            healthy = True
        finally:
            with self._listener_lock:
                if healthy and self._idle_listener is None:
                    self._idle_listener, listener = listener, None
            if listener is not None:
                listener.close()

    def unfinished(self, *, batch_id: str | None = None, job_ids: Sequence[str] | None = None) -> set[str]:
        """The ids of the batch's jobs (or of ``job_ids``) that have not reached a final status."""
        final = [s.value for s in JobStatus if s.terminal]
        found: set[str] = set()
        with self._read() as conn:
            if batch_id is not None:
                query = select(jobs.c.id).where(jobs.c.batch_id == batch_id, jobs.c.status.not_in(final))
                found.update(conn.execute(query).scalars())
            for part in q.chunks(list(job_ids or [])):
                query = select(jobs.c.id).where(jobs.c.id.in_(part), jobs.c.status.not_in(final))
                found.update(conn.execute(query).scalars())
        return found

    def pace(self, *, batch_id: str | None = None, job_ids: Sequence[str] | None = None) -> stats.Pace:
        """Counts, progress and rendering pace of one batch or of the jobs ``job_ids``."""
        with self._read() as conn:
            return stats.pace(conn, batch_id=batch_id, job_ids=None if job_ids is None else list(job_ids))

    def events(self, job_id: str) -> list[EventRecord]:
        """The job's trail, oldest first. Raises :class:`JobNotFound` for an unknown job."""
        with self._read() as conn:
            if conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is None:
                raise JobNotFound(job_id)
            query = select(events).where(events.c.job_id == job_id).order_by(events.c.id)
            return [EventRecord.from_row(r) for r in conn.execute(query).mappings()]

    def find_cache_original(
        self, job_key: str, weights_fingerprint: str | None = None
    ) -> tuple[JobRecord, OutputRecord] | None:
        """The succeeded job a cache hit may answer from, with its output's record.

        The most recently finished succeeded job with this key (and these weights, if given)
        whose output is in state ``ok`` and that did not render degraded; a cache hit answers from
        it after checking the file.
        """
        query = (
            select(jobs, *q.output_columns())
            .join(outputs, outputs.c.uri == jobs.c.output_uri)
            .where(jobs.c.job_key == job_key, jobs.c.status == JobStatus.SUCCEEDED.value, outputs.c.state == "ok",
                   jobs.c.degraded_reason.is_(None))
        )
        if weights_fingerprint is not None:
            query = query.where(jobs.c.weights_fingerprint == weights_fingerprint)
        query = query.order_by(jobs.c.finished_at.desc(), jobs.c.id).limit(1)
        with self._read() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else (JobRecord.from_row(row), q.output_record(row))

    def output(self, uri: str) -> OutputRecord | None:
        """The integrity record of a stored output (None: never recorded)."""
        with self._read() as conn:
            return o.get(conn, uri)

    def outputs_of(self, uris: Sequence[str]) -> dict[str, OutputRecord]:
        """The ``outputs`` rows of ``uris`` that exist, by URI."""
        with self._read() as conn:
            return o.by_uri(conn, uris)

    def stats_snapshot(self) -> stats.LedgerSnapshot:
        """Aggregates for monitoring (job counts, oldest queued, workers, recent render times)."""
        with self._read() as conn:
            return stats.snapshot(conn, self._now())

    def farm_load(self, *, live_within_s: float, models: Collection[str] | None = None) -> stats.FarmLoad:
        """How loaded the farm is now (one query): what degradation under load decides from.

        The oldest queued interactive job's wait (of ``models`` when given), and the live workers
        (seen within ``live_within_s``, idle or busy) and how many of them are busy. See
        :func:`farm.ledger.stats.farm_load`.
        """
        with self._read() as conn:
            return stats.farm_load(conn, self._now(), live_within_s=live_within_s, models=models)

    def list_workers(self) -> list[WorkerRecord]:
        """Every worker ever seen, by name."""
        with self._read() as conn:
            return [WorkerRecord.from_row(r) for r in conn.execute(select(workers).order_by(workers.c.name)).mappings()]

    def ping(self) -> None:
        """One round trip to the database (raises the driver's error when it does not answer)."""
        with self._read() as conn:
            conn.execute(select(1)).scalar_one()

    def queued_models(self, *, batch_id: str | None = None, job_ids: Sequence[str] | None = None) -> dict[str, int]:
        """How many jobs of each model are queued: of one batch, or among ``job_ids``."""
        query = select(jobs.c.model_name, func.count()).where(jobs.c.status == JobStatus.QUEUED.value)
        if batch_id is not None:
            query = query.where(jobs.c.batch_id == batch_id)
        counts: dict[str, int] = {}
        with self._read() as conn:
            parts = [None] if job_ids is None else list(q.chunks(list(job_ids)))
            for part in parts:
                chosen = query if part is None else query.where(jobs.c.id.in_(part))
                for model, n in conn.execute(chosen.group_by(jobs.c.model_name)):
                    counts[model] = counts.get(model, 0) + int(n)
        return counts

    def model_fingerprint(self, name: str) -> str | None:
        """The weights fingerprint recorded for model ``name``, or None."""
        with self._read() as conn:
            query = select(models.c.weights_fingerprint).where(models.c.name == name)
            return conn.execute(query).scalar_one_or_none()

    def jobs_to_enqueue(self, *, batch_id: str | None = None, job_ids: Sequence[str] | None = None,
                        stale_before: datetime | None = None, limit: int | None = None,
                        lost_before: Mapping[str, datetime] | None = None) -> list[tuple[str, str]]:
        """``(id, route)`` of queued non-follower jobs whose message is due (route: class and model).

        Those whose ``enqueued_at`` is NULL (or older than ``stale_before``, or, per route, than
        ``lost_before[route]``), optionally of one batch / among ``job_ids``; interactive first,
        then oldest, then ``batch_index``.
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        with self._read() as conn:
            return q.to_enqueue(conn, batch_id=batch_id, job_ids=job_ids, stale_before=stale_before, limit=limit,
                                lost_before=lost_before)

    def unconfirmed(self, batch_id: str) -> list[tuple[str, str, int]]:
        """``(id, route, batch_index)`` of the batch's queued jobs not confirmed sent."""
        with self._read() as conn:
            return q.unconfirmed(conn, batch_id)

    def stalled_batches(self, before: datetime, limit: int = 100) -> list[str]:
        """Batches created before ``before`` whose messages are not all confirmed sent.

        Their producer died while sending, or the broker went away.
        """
        with self._read() as conn:
            return q.stalled_batches(conn, before, limit)
