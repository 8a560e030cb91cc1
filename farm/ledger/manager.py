"""The ledger gateway: every read and write of the ledger database goes through :class:`Ledger`.

Status changes have exactly one door, :meth:`Ledger.transition` (and the private
``_transition`` it shares with the convenience methods ``claim``, ``record_success``,
``record_failure``, ``cancel`` and ``requeue_expired``). In one transaction it locks the job row,
checks the edge against :mod:`farm.ledger.status`, runs a conditional
``UPDATE jobs ... WHERE id = :id AND status = :current`` and appends the event. If the edge is not
allowed, or the UPDATE matched no row, the transaction rolls back and
:class:`~farm.errors.IllegalTransition` (or :class:`~farm.errors.JobNotFound`) is raised:
nothing is written, no event either.

Many jobs on one edge at once (cache hits of new jobs, a leader's followers) go through
``_transition_many``: the same checks, row locks, conditional UPDATEs and one event per job, sent
set-wise. The farm's queries (dedup, enqueue backlog, claim_more, workers/models upserts) live in
:mod:`farm.ledger.queueing`; the methods here are still the only way in.

Events are append-only: the gateway has no way to change or delete one.

Errors: connection and operational failures become :class:`~farm.errors.LedgerUnavailable`
(transient); a database without farm's tables gives :class:`~farm.errors.SchemaOutOfDate`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from sqlalchemy import case, func, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from farm.errors import (
    BatchNotFound,
    FarmError,
    IllegalTransition,
    JobNotFound,
    LedgerUnavailable,
    SchemaOutOfDate,
)
from farm.ledger import db, stats
from farm.ledger import outputs as o
from farm.ledger import queueing as q
from farm.ledger.models import batches, events, jobs, models, outputs, workers
from farm.ledger.records import (
    BatchRecord,
    EventRecord,
    JobRecord,
    NewJob,
    OutputMark,
    OutputRecord,
    WorkerRecord,
    new_id,
)
from farm.ledger.status import PRIORITIES, JobStatus, allowed_from, parse_status
from farm.ledger.types import utcnow
from farm.settings import DEFAULT_MAX_ATTEMPTS, Settings, redacted_url

__all__ = ["DEFAULT_MAX_ATTEMPTS", "BatchRecord", "EventRecord", "JobRecord", "Ledger", "NewJob", "WorkerRecord"]

#: Longest error message kept with a job (longer ones are cut, with a marker).
MAX_ERROR_MESSAGE_CHARS = 10_000
#: Error type recorded when the reaper fails a job whose last lease expired.
LEASE_EXPIRED_ERROR = "LeaseExpired"
#: Longest event kind (the column's size; SQLite would not enforce it).
MAX_EVENT_KIND_CHARS = 32
#: Columns a transition may not set through ``**fields``.
_PROTECTED_COLUMNS = frozenset({"id", "status"})
_UNDEFINED_TABLE_SQLSTATE = "42P01"


def _bare_name(name: str) -> str:
    """The last component of a path-like name (a manifest's file name, never a path)."""
    bare = PureWindowsPath(PurePosixPath(name).name).name
    return bare[:255]


def _cut(message: str) -> str:
    if len(message) <= MAX_ERROR_MESSAGE_CHARS:
        return message
    return message[: MAX_ERROR_MESSAGE_CHARS - 20] + " ...[truncated]"


def _check_change(names: Collection[str], kind: str) -> None:
    bad = set(names) - set(jobs.c.keys()) | (set(names) & _PROTECTED_COLUMNS)
    if bad:
        raise ValueError(f"a transition cannot set {sorted(bad)}")
    if not 0 < len(kind) <= MAX_EVENT_KIND_CHARS:
        raise ValueError(f"event kind must be 1-{MAX_EVENT_KIND_CHARS} characters, got {kind!r}")


def _missing_table(error: sa_exc.DBAPIError) -> bool:
    orig = error.orig
    return "no such table" in str(orig) or getattr(orig, "sqlstate", None) == _UNDEFINED_TABLE_SQLSTATE


class Ledger:
    """The gateway to the ledger database at ``url`` (any SQLAlchemy URL; SQLite or Postgres).

    ``clock`` returns the current aware UTC time (tests pass a fake one). The constructor does no
    I/O; :meth:`from_settings` also makes sure the schema is usable.
    """

    def __init__(self, url: str, *, echo: bool = False, clock: Callable[[], datetime] | None = None):
        self.url = url
        self._engine: Engine = db.make_engine(url, echo=echo)
        self._clock = clock or utcnow

    @classmethod
    def from_settings(cls, settings: Settings) -> Ledger:
        """The ledger the settings name. Embedded (SQLite in the data dir): created and migrated to
        head as needed. Any other URL: must already be at head, else :class:`SchemaOutOfDate`."""
        ledger = cls(settings.ledger_url, echo=settings.sql_echo)
        try:
            if settings.embedded:
                settings.data_dir.mkdir(parents=True, exist_ok=True)
                ledger.ensure_schema(upgrade=True)
            else:
                ledger.ensure_schema(upgrade=False)
        except BaseException:
            ledger.close()
            raise
        return ledger

    @property
    def display_url(self) -> str:
        return redacted_url(self.url)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql`` (SQLAlchemy's backend name)."""
        return self._engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()

    def stats_snapshot(self) -> stats.LedgerSnapshot:
        """Aggregates for monitoring (job counts, oldest queued, workers, recent render times)."""
        with self._read() as conn:
            return stats.snapshot(conn, self._now())

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self.display_url!r})"

    # -- plumbing ------------------------------------------------------------------------------
    def _now(self) -> datetime:
        return self._clock()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Translate driver errors into farm's: unreachable -> LedgerUnavailable (transient),
        no tables -> SchemaOutOfDate."""
        try:
            yield
        except FarmError:
            raise
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.ProgrammingError) as error:
            if _missing_table(error):
                raise SchemaOutOfDate(
                    f"the ledger at {self.display_url} has no farm tables: run `farm db upgrade`"
                ) from error
            if isinstance(error, sa_exc.ProgrammingError):
                raise
            detail = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
            raise LedgerUnavailable(f"ledger {self.display_url} unavailable: {detail}") from error
        except (sa_exc.DisconnectionError, sa_exc.TimeoutError) as error:
            raise LedgerUnavailable(f"ledger {self.display_url} unavailable: {error}") from error

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._guard(), self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite: writers queue up front)."""
        with self._guard(), self._engine.connect() as conn:
            conn.execution_options(**{db.WRITE_OPTION: True})
            with conn.begin():
                yield conn

    # -- schema --------------------------------------------------------------------------------
    def current_revision(self) -> str | None:
        with self._guard():
            return db.current_revision(self._engine)

    @staticmethod
    def head_revision() -> str:
        heads = db.head_revisions()
        if len(heads) != 1:
            raise RuntimeError(f"the migration scripts have {len(heads)} heads: {heads}")
        return heads[0]

    def upgrade(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Migrate to ``revision``; returns the revisions before and after this call's work
        (equal when there was nothing to do)."""
        with self._guard():
            steps = db.upgrade(self._engine, revision)
            after = db.current_revision(self._engine)
        return (steps[0][0] if steps else after), after

    def downgrade(self, revision: str) -> tuple[str | None, str | None]:
        """Migrate down to ``revision`` (``"base"`` drops every ledger table)."""
        with self._guard():
            steps = db.downgrade(self._engine, revision)
            after = db.current_revision(self._engine)
        return (steps[0][0] if steps else after), after

    def schema_diff(self) -> list[Any]:
        """Alembic's differences between the database and the models (empty: they agree)."""
        with self._guard():
            return db.schema_diff(self._engine)

    def ensure_schema(self, *, upgrade: bool) -> None:
        """Upgrade to head (``upgrade=True``) or raise :class:`SchemaOutOfDate` unless at head."""
        head = self.head_revision()
        current = self.current_revision()
        if current == head:
            return
        if upgrade:
            self.upgrade("head")
            return
        raise SchemaOutOfDate(
            f"the ledger at {self.display_url} is at revision {current or 'none'}, the code needs "
            f"{head}: run `farm db upgrade`"
        )

    # -- adding jobs ---------------------------------------------------------------------------
    def add_jobs(self, new_jobs: Sequence[NewJob], *, output_ok: o.OutputFilter | None = None) -> list[str]:
        """Add jobs (queued) in one transaction, with one "created" event each; returns their ids.
        Dedup applies (see :mod:`farm.ledger.queueing`): cache hits end succeeded at once
        (event "cache-hit") from outputs in state ``ok`` that ``output_ok`` (if given) vouches
        for; followers stay queued behind their leader and are never enqueued."""
        if not new_jobs:
            return []
        with self._write() as conn:
            q.lock_dedup(conn)
            return self._insert_jobs(conn, new_jobs, output_ok)

    def add_job(self, new_job: NewJob, *, output_ok: o.OutputFilter | None = None) -> str:
        return self.add_jobs([new_job], output_ok=output_ok)[0]

    def create_batch(
        self, manifest_digest: str, name: str, source_name: str, new_jobs: Sequence[NewJob], *,
        output_ok: o.OutputFilter | None = None,
    ) -> tuple[str, bool]:
        """Write a batch and all its jobs in one transaction: ``(batch_id, True)``. If a batch with
        this manifest digest exists, write nothing and return ``(existing_id, False)``. Dedup as
        in :meth:`add_jobs`."""
        by_digest = select(batches.c.id).where(batches.c.manifest_digest == manifest_digest)
        try:
            with self._write() as conn:
                q.lock_dedup(conn)
                existing = conn.execute(by_digest).scalar_one_or_none()
                if existing is not None:
                    return existing, False
                batch_id = new_id()
                conn.execute(
                    insert(batches).values(
                        id=batch_id,
                        manifest_digest=manifest_digest,
                        name=name[:255],
                        source_name=_bare_name(source_name),
                        created_at=self._now(),
                        job_count=len(new_jobs),
                    )
                )
                self._insert_jobs(conn, [replace(j, batch_id=batch_id) for j in new_jobs], output_ok)
                return batch_id, True
        except sa_exc.IntegrityError:
            # Another producer committed the same digest between our check and our insert.
            with self._read() as conn:
                existing = conn.execute(by_digest).scalar_one_or_none()
            if existing is None:
                raise
            return existing, False

    def _insert_jobs(self, conn: Connection, new_jobs: Sequence[NewJob],
                     output_ok: o.OutputFilter | None) -> list[str]:
        """Insert with dedup, inside a write transaction that holds the dedup lock."""
        now = self._now()
        plan = q.plan_dedup(conn, new_jobs, output_ok)
        q.insert_jobs(conn, new_jobs, plan, now)
        hits = [(j.id, d.original) for j, d in zip(new_jobs, plan, strict=True) if d.original is not None]
        self._answer_queued(conn, hits)
        return [j.id for j in new_jobs]

    def _answer_queued(self, conn: Connection, hits: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Queued jobs -> succeeded, each with its original's output (event "cache-hit")."""
        now = self._now()
        self._transition_many(
            conn, JobStatus.QUEUED, JobStatus.SUCCEEDED, kind=q.CACHE_HIT_EVENT, worker=None,
            changes=[(job_id, q.answered_fields(original, now=now, queued=True), {"original": original["id"]})
                     for job_id, original in hits],
        )

    def _resolve_followers(self, conn: Connection, leader_id: str) -> None:
        """The leader succeeded: answer its queued followers from it (same transaction)."""
        followers = q.follower_ids(conn, leader_id)
        if followers:
            original = q.original_row(conn, leader_id)
            assert original is not None
            self._answer_queued(conn, [(follower, original) for follower in followers])

    def _release_followers(self, conn: Connection, leader_id: str, status: JobStatus) -> None:
        if status in (JobStatus.FAILED, JobStatus.CANCELLED):
            q.release_followers(conn, leader_id, leader_status=status, now=self._now())

    # -- reading -------------------------------------------------------------------------------
    def get_job(self, job_id: str) -> JobRecord:
        with self._read() as conn:
            return self._job(conn, job_id)

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

    # -- enqueue bookkeeping -------------------------------------------------------------------
    def jobs_to_enqueue(self, *, batch_id: str | None = None, job_ids: Sequence[str] | None = None,
                        stale_before: datetime | None = None, limit: int | None = None) -> list[tuple[str, str]]:
        """``(id, priority)`` of queued non-follower jobs whose ``enqueued_at`` is NULL (or older
        than ``stale_before``), optionally of one batch / among ``job_ids``; interactive first,
        then oldest, then ``batch_index``."""
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        with self._read() as conn:
            return q.to_enqueue(conn, batch_id=batch_id, job_ids=job_ids, stale_before=stale_before, limit=limit)

    def mark_enqueued(self, job_ids: Sequence[str]) -> None:
        """Record that the jobs' wake-up messages were sent now."""
        if not job_ids:
            return
        with self._write() as conn:
            q.mark_enqueued(conn, job_ids, self._now())

    def list_jobs(
        self,
        batch_id: str | None = None,
        status: JobStatus | str | None = None,
        limit: int = 100,
        offset: int = 0,
        starred: bool | None = None,
    ) -> list[JobRecord]:
        """Jobs, newest first (ties by id), optionally of one batch, one status and/or only the
        starred (``starred=True``) or only the unstarred (``starred=False``) ones."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        query = select(jobs)
        if batch_id is not None:
            query = query.where(jobs.c.batch_id == batch_id)
        if status is not None:
            query = query.where(jobs.c.status == parse_status(str(status)).value)
        if starred is not None:
            query = query.where(jobs.c.starred == starred)
        query = query.order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit).offset(offset)
        with self._read() as conn:
            return [JobRecord.from_row(r) for r in conn.execute(query).mappings()]

    def get_batch(self, batch_id: str) -> BatchRecord:
        with self._read() as conn:
            row = conn.execute(select(batches).where(batches.c.id == batch_id)).mappings().first()
        if row is None:
            raise BatchNotFound(batch_id)
        return BatchRecord.from_row(row)

    def find_batch_by_digest(self, manifest_digest: str) -> BatchRecord | None:
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
        """The most recently finished succeeded job with this key (and these weights, if given)
        whose output is in state ``ok``, with that output's record: what a cache hit may answer
        from (after checking the file)."""
        query = (
            select(jobs, *q.output_columns())
            .join(outputs, outputs.c.uri == jobs.c.output_uri)
            .where(jobs.c.job_key == job_key, jobs.c.status == JobStatus.SUCCEEDED.value, outputs.c.state == "ok")
        )
        if weights_fingerprint is not None:
            query = query.where(jobs.c.weights_fingerprint == weights_fingerprint)
        query = query.order_by(jobs.c.finished_at.desc(), jobs.c.id).limit(1)
        with self._read() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else (JobRecord.from_row(row), q.output_record(row))

    # -- outputs -------------------------------------------------------------------------------
    def output(self, uri: str) -> OutputRecord | None:
        """The integrity record of a stored output (None: never recorded)."""
        with self._read() as conn:
            return o.get(conn, uri)

    def outputs_of(self, uris: Sequence[str]) -> dict[str, OutputRecord]:
        with self._read() as conn:
            return o.by_uri(conn, uris)

    def mark_outputs(self, marks: Sequence[OutputMark]) -> list[str]:
        """Record what output checks found (``ok`` refreshes the verified stamp; ``missing`` and
        ``corrupt`` keep the cache off the file); the URIs whose state changed, each change an
        event on the jobs that point at it. See :mod:`farm.ledger.outputs`."""
        if not marks:
            return []
        with self._write() as conn:
            return o.mark(conn, marks, self._now())

    def replace_output_hash(self, uri: str, file_sha256: str, *, reason: str) -> list[str]:
        """A repair wrote new bytes for the same frames (another ffmpeg build): the output's and its
        jobs' ``file_sha256`` become the new file's (each job gets an ``output-rewritten`` event
        with the old and new hash). Returns the ids of the jobs changed."""
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

    # -- the one door for status changes -------------------------------------------------------
    def transition(
        self,
        job_id: str,
        to: JobStatus | str,
        *,
        kind: str,
        worker: str | None = None,
        detail: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> JobRecord:
        """Move the job to ``to`` along an allowed edge, setting ``fields`` (other columns) in the
        same UPDATE and appending an event of ``kind``. Returns the job as it is afterwards. Like the
        convenience methods, a job that succeeds answers its followers; one that fails or is
        cancelled releases them."""
        target = parse_status(str(to))
        with self._write() as conn:
            q.lock_dedup(conn, shared=True)
            self._transition(conn, job_id, target, kind=kind, worker=worker, detail=detail, fields=fields)
            if target is JobStatus.SUCCEEDED:
                self._resolve_followers(conn, job_id)
            self._release_followers(conn, job_id, target)
            return self._job(conn, job_id)

    def _transition(
        self,
        conn: Connection,
        job_id: str,
        to: JobStatus,
        *,
        kind: str,
        worker: str | None,
        detail: Mapping[str, Any] | None,
        fields: Mapping[str, Any],
        only_from: Collection[JobStatus] | None = None,
        guard: ColumnElement[bool] | None = None,
    ) -> JobStatus:
        """The status change itself, inside the caller's write transaction. ``only_from`` narrows
        the allowed sources; ``guard`` is an extra condition of the UPDATE (e.g. ownership). Any
        exception raised here rolls the whole transaction back. Returns the previous status."""
        _check_change(fields, kind)
        allowed = allowed_from(to)
        if only_from is not None:
            allowed = allowed & frozenset(only_from)
        # Lock the row (Postgres; SQLite's write transaction already holds the database lock).
        row = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id).with_for_update()).first()
        if row is None:
            raise JobNotFound(job_id)
        current = JobStatus(row.status)
        if current not in allowed:
            raise IllegalTransition(job_id, current.value, to.value)
        # Conditional on the status we checked (current is one of the allowed sources).
        conditions = [jobs.c.id == job_id, jobs.c.status == current.value]
        if guard is not None:
            conditions.append(guard)
        result = conn.execute(update(jobs).where(*conditions).values(status=to.value, **fields))
        if result.rowcount != 1:
            raise IllegalTransition(job_id, current.value, to.value)
        conn.execute(
            insert(events).values(
                job_id=job_id,
                at=self._now(),
                from_status=current.value,
                to_status=to.value,
                kind=kind,
                worker=worker,
                detail=dict(detail) if detail is not None else None,
            )
        )
        return current

    def _transition_many(self, conn: Connection, source: JobStatus, to: JobStatus, *, kind: str, worker: str | None,
                         changes: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any] | None]]) -> None:
        """:meth:`_transition` set-wise, for many jobs on the one edge ``source -> to``: ``changes``
        are ``(job_id, fields, detail)`` (every job setting the same columns). The rows are locked
        and checked, updated conditionally on ``source`` (one UPDATE each, sent as executemany),
        and get one event each. A job not in ``source`` raises :class:`IllegalTransition` (and
        an unknown one :class:`JobNotFound`): the caller's transaction rolls back."""
        if not changes:
            return
        _check_change(changes[0][1], kind)
        if any(set(fields) != set(changes[0][1]) for _, fields, _ in changes):
            raise ValueError("every job of a set-wise transition must set the same columns")
        statuses = q.lock_statuses(conn, [job_id for job_id, _, _ in changes])
        for job_id, _, _ in changes:
            if job_id not in statuses:
                raise JobNotFound(job_id)
            if statuses[job_id] != source.value or source not in allowed_from(to):
                raise IllegalTransition(job_id, statuses[job_id], to.value)
        if q.update_each(conn, source, to, [(job_id, fields) for job_id, fields, _ in changes]) != len(changes):
            raise IllegalTransition(changes[0][0], source.value, to.value)
        now = self._now()
        conn.execute(insert(events), [
            {"job_id": job_id, "at": now, "from_status": source.value, "to_status": to.value, "kind": kind,
             "worker": worker, "detail": dict(detail) if detail is not None else None}
            for job_id, _, detail in changes
        ])

    # -- worker life cycle ---------------------------------------------------------------------
    def claim(self, job_id: str, *, worker_host: str, worker_device: str, lease_s: float) -> JobRecord | None:
        """queued -> running for ``worker_host``: attempts + 1, a lease of ``lease_s`` seconds.
        Returns None when the job is not queued or is a follower (a redelivered or duplicate
        message: drop it); raises :class:`JobNotFound` for an unknown id."""
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        try:
            with self._write() as conn:
                self._claim(conn, job_id, worker_host=worker_host, worker_device=worker_device, lease_s=lease_s)
                return self._job(conn, job_id)
        except IllegalTransition:
            return None

    def _claim(self, conn: Connection, job_id: str, *, worker_host: str, worker_device: str, lease_s: float) -> None:
        now = self._now()
        self._transition(
            conn, job_id, JobStatus.RUNNING, kind="claimed", worker=worker_host,
            detail={"device": worker_device, "lease_s": lease_s},
            fields={
                "attempts": jobs.c.attempts + 1,
                "worker_host": worker_host,
                "worker_device": worker_device,
                "lease_expires_at": now + timedelta(seconds=lease_s),
                "heartbeat_at": now,
                "started_at": now,
                "finished_at": None,
                "progress": 0.0,
            },
            only_from={JobStatus.QUEUED},
            guard=jobs.c.cache_of_job_id.is_(None),
        )

    def claim_more(self, compat_key: str, *, limit: int, worker_host: str, worker_device: str, lease_s: float,
                   priority: str | None = None) -> list[JobRecord]:
        """Claim up to ``limit`` more queued non-follower jobs with this compat key (interactive
        first, then oldest, then manifest order), each with its own "claimed" event, in one
        transaction. On Postgres rows locked by a concurrent claimer are skipped, so two workers
        never get the same job."""
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        if priority is not None and priority not in PRIORITIES:
            raise ValueError(f"unknown priority {priority!r}; valid: {', '.join(PRIORITIES)}")
        if limit <= 0:
            return []
        with self._write() as conn:
            ids = q.claimable_ids(conn, compat_key, limit=limit, priority=priority)
            for job_id in ids:
                self._claim(conn, job_id, worker_host=worker_host, worker_device=worker_device, lease_s=lease_s)
            found = {r["id"]: JobRecord.from_row(r) for r in q.jobs_by_id(conn, ids)}
        return [found[i] for i in ids]

    def release(self, job_id: str, *, worker_host: str, reason: str) -> JobRecord | None:
        """Hand a running job back (SIGTERM): running -> queued, event "released", the attempt not
        counted (attempts - 1, never below 0), ``enqueued_at`` NULL (the reaper sends it again).
        Only by its owner: None, nothing written, when the job is not running or ``worker_host``
        does not own it."""
        try:
            with self._write() as conn:
                self._transition(
                    conn, job_id, JobStatus.QUEUED, kind="released", worker=worker_host,
                    detail={"reason": reason},
                    fields={
                        "attempts": case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0),
                        "enqueued_at": None,
                        "lease_expires_at": None,
                        "progress": 0.0,
                    },
                    only_from={JobStatus.RUNNING},
                    guard=jobs.c.worker_host == worker_host,
                )
                return self._job(conn, job_id)
        except IllegalTransition:
            return None

    def heartbeat(
        self, job_id: str, *, worker_host: str, lease_s: float, progress: float | None = None
    ) -> bool:
        """Extend the lease of a running job owned by ``worker_host`` (and record progress).
        False when the job is no longer running or belongs to another worker: stop rendering.
        Heartbeats write no event."""
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        now = self._now()
        values: dict[str, Any] = {"heartbeat_at": now, "lease_expires_at": now + timedelta(seconds=lease_s)}
        if progress is not None:
            if not 0.0 <= progress <= 1.0:
                raise ValueError(f"progress must be in [0, 1], got {progress}")
            values["progress"] = progress
        query = (
            update(jobs)
            .where(
                jobs.c.id == job_id,
                jobs.c.status == JobStatus.RUNNING.value,
                jobs.c.worker_host == worker_host,
            )
            .values(**values)
        )
        with self._write() as conn:
            return conn.execute(query).rowcount == 1

    def _owner_guard(self, worker_host: str | None) -> ColumnElement[bool] | None:
        return None if worker_host is None else jobs.c.worker_host == worker_host

    def record_success(
        self,
        job_id: str,
        *,
        output_uri: str,
        file_sha256: str,
        frames_sha256: str,
        effective_params: Mapping[str, Any],
        weights_fingerprint: str,
        env_fingerprint: Mapping[str, Any],
        timings: Mapping[str, Any],
        worker_host: str | None = None,
        size_bytes: int | None = None,
    ) -> JobRecord:
        """running -> succeeded with the render's results. With ``worker_host``, only if that
        worker still owns the job (else :class:`IllegalTransition`, nothing written). The job's
        queued followers are answered from it in the same transaction. The output is recorded
        ``ok`` (verified now: its writer just wrote or checked it)."""
        with self._write() as conn:
            q.lock_dedup(conn, shared=True)
            o.record_written(conn, uri=output_uri, file_sha256=file_sha256, frames_sha256=frames_sha256,
                             size_bytes=size_bytes, now=self._now())
            self._transition(
                conn, job_id, JobStatus.SUCCEEDED, kind="succeeded", worker=worker_host,
                detail={"output_uri": output_uri, "file_sha256": file_sha256, "frames_sha256": frames_sha256},
                fields={
                    "output_uri": output_uri,
                    "file_sha256": file_sha256,
                    "frames_sha256": frames_sha256,
                    "effective_params": dict(effective_params),
                    "weights_fingerprint": weights_fingerprint,
                    "env_fingerprint": dict(env_fingerprint),
                    "timings": dict(timings),
                    "finished_at": self._now(),
                    "lease_expires_at": None,
                    "progress": 1.0,
                    "error_type": None,
                    "error_message": None,
                },
                only_from={JobStatus.RUNNING},
                guard=self._owner_guard(worker_host),
            )
            self._resolve_followers(conn, job_id)
            return self._job(conn, job_id)

    def record_cache_hit(self, job_id: str, original_id: str, *, worker_host: str | None = None) -> JobRecord:
        """running -> succeeded with the output of the succeeded job ``original_id`` (a worker found,
        after loading the model, that the output exists); its followers are answered too. With
        ``worker_host``, only if that worker owns the job. :class:`IllegalTransition` when the
        original has not succeeded (nothing written)."""
        with self._write() as conn:
            q.lock_dedup(conn, shared=True)
            original = q.original_row(conn, original_id)
            if original is None:
                raise JobNotFound(original_id)
            if original["status"] != JobStatus.SUCCEEDED.value or original_id == job_id:
                raise IllegalTransition(original_id, original["status"], JobStatus.SUCCEEDED.value)
            self._transition(
                conn, job_id, JobStatus.SUCCEEDED, kind=q.CACHE_HIT_EVENT, worker=worker_host,
                detail={"original": original_id},
                fields=q.answered_fields(original, now=self._now(), queued=False),
                only_from={JobStatus.RUNNING}, guard=self._owner_guard(worker_host),
            )
            self._resolve_followers(conn, job_id)
            return self._job(conn, job_id)

    def record_failure(
        self,
        job_id: str,
        *,
        error_type: str,
        error_message: str,
        retry: bool,
        worker_host: str | None = None,
    ) -> JobRecord:
        """A running job's attempt failed. With ``retry`` and attempts left: back to queued
        (event "retried", ``enqueued_at`` NULL: the reaper sends it again); otherwise failed for
        good (event "failed") and its followers are released."""
        message = _cut(error_message)
        with self._write() as conn:
            q.lock_dedup(conn, shared=True)
            row = conn.execute(
                select(jobs.c.attempts, jobs.c.max_attempts).where(jobs.c.id == job_id).with_for_update()
            ).first()
            if row is None:
                raise JobNotFound(job_id)
            again = retry and row.attempts < row.max_attempts
            fields: dict[str, Any] = {
                "error_type": error_type[:128],
                "error_message": message,
                "lease_expires_at": None,
            }
            if again:
                fields.update(progress=0.0, enqueued_at=None)
            else:
                fields["finished_at"] = self._now()
            to = JobStatus.QUEUED if again else JobStatus.FAILED
            self._transition(
                conn, job_id, to,
                kind="retried" if again else "failed", worker=worker_host,
                detail={
                    "error_type": error_type,
                    "error_message": message,
                    "attempts": row.attempts,
                    "max_attempts": row.max_attempts,
                    "retry_requested": retry,
                },
                fields=fields,
                only_from={JobStatus.RUNNING},
                guard=self._owner_guard(worker_host),
            )
            self._release_followers(conn, job_id, to)
            return self._job(conn, job_id)

    def cancel(self, job_id: str, *, detail: Mapping[str, Any] | None = None) -> JobRecord:
        """queued or running -> cancelled (a running worker sees it at its next heartbeat); the
        job's followers are released."""
        with self._write() as conn:
            q.lock_dedup(conn, shared=True)
            self._transition(
                conn, job_id, JobStatus.CANCELLED, kind="cancelled", worker=None, detail=detail,
                fields={"finished_at": self._now(), "lease_expires_at": None},
            )
            self._release_followers(conn, job_id, JobStatus.CANCELLED)
            return self._job(conn, job_id)

    def requeue_expired(self, now: datetime | None = None) -> list[str]:
        """The reaper: every running job whose lease expired before ``now`` goes back to queued
        (``enqueued_at`` NULL) if it has attempts left, else fails with
        ``error_type="LeaseExpired"`` (its followers released). Returns their ids.
        A job whose worker heartbeats in the meantime is left alone."""
        now = now or self._now()
        expired_query = (
            select(jobs.c.id)
            .where(jobs.c.status == JobStatus.RUNNING.value, jobs.c.lease_expires_at < now)
            .order_by(jobs.c.lease_expires_at)
        )
        with self._read() as conn:
            candidates = list(conn.execute(expired_query).scalars())
        reaped = []
        for job_id in candidates:
            try:
                with self._write() as conn:
                    q.lock_dedup(conn, shared=True)
                    c = jobs.c
                    columns = (c.attempts, c.max_attempts, c.worker_host, c.lease_expires_at)
                    row = conn.execute(select(*columns).where(c.id == job_id).with_for_update()).first()
                    if row is None or row.lease_expires_at is None:
                        continue
                    again = row.attempts < row.max_attempts
                    fields: dict[str, Any] = {"lease_expires_at": None}
                    if again:
                        fields.update(progress=0.0, enqueued_at=None)
                    else:
                        fields.update(
                            error_type=LEASE_EXPIRED_ERROR,
                            error_message=f"lease expired on {row.worker_host} after attempt {row.attempts} "
                                          f"of {row.max_attempts}",
                            finished_at=now,
                        )
                    to = JobStatus.QUEUED if again else JobStatus.FAILED
                    self._transition(
                        conn, job_id, to,
                        kind="lease-expired", worker=row.worker_host,
                        detail={
                            "lease_expires_at": row.lease_expires_at.isoformat(),
                            "attempts": row.attempts,
                            "max_attempts": row.max_attempts,
                            "requeued": again,
                        },
                        fields=fields,
                        only_from={JobStatus.RUNNING},
                        guard=jobs.c.lease_expires_at < now,
                    )
                    self._release_followers(conn, job_id, to)
                reaped.append(job_id)
            except IllegalTransition:
                continue  # finished, cancelled or heartbeated since we looked
        return reaped

    # -- annotations (no status change) --------------------------------------------------------
    def set_starred(self, job_id: str, starred: bool) -> bool:
        """Star or unstar a job (event "starred"/"unstarred"). Returns False, writing nothing,
        when the job already was in that state."""
        with self._write() as conn:
            row = conn.execute(
                select(jobs.c.status, jobs.c.starred).where(jobs.c.id == job_id).with_for_update()
            ).first()
            if row is None:
                raise JobNotFound(job_id)
            if bool(row.starred) == starred:
                return False
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(starred=starred))
            conn.execute(
                insert(events).values(
                    job_id=job_id,
                    at=self._now(),
                    from_status=row.status,
                    to_status=row.status,
                    kind="starred" if starred else "unstarred",
                    worker=None,
                    detail=None,
                )
            )
            return True

    # -- models and workers --------------------------------------------------------------------
    def register_model(self, name: str, weights_fingerprint: str, *, worker: str | None) -> None:
        """Record the weights fingerprint ``name`` is loaded with (upsert): outputs rendered with
        it answer new jobs as cache hits."""
        if not weights_fingerprint:
            raise ValueError("weights_fingerprint must not be empty")
        with self._write() as conn:
            q.upsert_model(conn, {"name": name, "weights_fingerprint": weights_fingerprint,
                                  "updated_at": self._now(), "worker": worker})

    def model_fingerprint(self, name: str) -> str | None:
        with self._read() as conn:
            query = select(models.c.weights_fingerprint).where(models.c.name == name)
            return conn.execute(query).scalar_one_or_none()

    def worker_seen(self, name: str, *, host: str, device: str, pid: int, state: str, consecutive_failures: int = 0,
                    jobs_succeeded: int = 0, jobs_failed: int = 0, detail: Mapping[str, Any] | None = None) -> None:
        """Insert or update the worker ``name`` with these fields and ``last_seen_at`` = now
        (``started_at`` is set when it first appears, reports ``starting`` or a new pid)."""
        values = q.worker_values(
            name, self._now(), host=host, device=device, pid=pid, state=state, detail=detail,
            consecutive_failures=consecutive_failures, jobs_succeeded=jobs_succeeded, jobs_failed=jobs_failed,
        )
        with self._write() as conn:
            q.upsert_worker(conn, values)

    def list_workers(self) -> list[WorkerRecord]:
        """Every worker ever seen, by name."""
        with self._read() as conn:
            return [WorkerRecord.from_row(r) for r in conn.execute(select(workers).order_by(workers.c.name)).mappings()]
