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

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, NoReturn

from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from farm.errors import (
    FarmError,
    IllegalTransition,
    JobNotFound,
)
from farm.kinds import route_of
from farm.ledger import direct, onestep
from farm.ledger import outputs as o
from farm.ledger import queueing as q
from farm.ledger.library import LedgerLibrary
from farm.ledger.models import batches, events, jobs
from farm.ledger.reads import LedgerReads
from farm.ledger.records import (
    Admission,
    BatchRecord,
    EventRecord,
    JobRecord,
    NewJob,
    WorkerRecord,
    new_id,
)
from farm.ledger.status import PRIORITIES, JobStatus, allowed_from, parse_status
from farm.ledger.upkeep import LedgerUpkeep
from farm.settings import DEFAULT_MAX_ATTEMPTS

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_ATTEMPTS", "BatchRecord", "EventRecord", "JobRecord", "Ledger", "NewJob", "WorkerRecord"]

#: Longest error message kept with a job (longer ones are cut, with a marker).
MAX_ERROR_MESSAGE_CHARS = 10_000
#: Error type recorded when the reaper fails a job whose last lease expired.
LEASE_EXPIRED_ERROR = "LeaseExpired"
#: Longest event kind (the column's size; SQLite would not enforce it).
MAX_EVENT_KIND_CHARS = 32
#: Most leaders one reaper pass settles the stranded followers of.
STRANDED_LIMIT = 100
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


class Ledger(LedgerReads, LedgerLibrary, LedgerUpkeep):
    """The gateway to the ledger database at ``url`` (any SQLAlchemy URL; SQLite or Postgres).

    It is :class:`~farm.ledger.base.LedgerBase` (connection, transactions, schema),
    :class:`~farm.ledger.reads.LedgerReads` (every read),
    :class:`~farm.ledger.library.LedgerLibrary` (stars and review labels),
    :class:`~farm.ledger.upkeep.LedgerUpkeep` (output marks, models, workers) and, here, every other write.

    ``clock`` returns the current aware UTC time (tests pass a fake one). The constructor does no
    I/O; :meth:`from_settings` also makes sure the schema is usable.
    """

    # -- schema --------------------------------------------------------------------------------
    # -- adding jobs ---------------------------------------------------------------------------
    def admit(self, new_jobs: Sequence[NewJob], *, output_ok: o.OutputFilter | None = None,
              mark_sent: bool = False) -> Admission:
        """Add jobs (queued) in ONE transaction, with one "created" event each, and say what became of each.

        Dedup (see :mod:`farm.ledger.queueing`) answers cache hits at once (event "cache-hit", from
        outputs in state ``ok`` that ``output_ok``, if given, vouches for) and queues followers
        behind their leader; the rest need a message (:attr:`Admission.to_send`). ``mark_sent``
        records those as sent in the same transaction (the caller sends right after the commit, and
        calls :meth:`unmark_enqueued` for any it could not send).
        """
        if not new_jobs:
            return Admission([], [], {}, {})
        # Dedup reads need the lock before them; jobs that all skip the cache take it at their insert,
        # and one such job on Postgres is ONE statement (no BEGIN/COMMIT round trips).
        lock_first = all(j.no_cache for j in new_jobs)
        with self._write_one() if lock_first and len(new_jobs) == 1 else self._write() as conn:
            if not lock_first:
                q.lock_dedup(conn)
            return self._insert_jobs(conn, new_jobs, output_ok, mark_sent, lock_dedup_first=lock_first)

    def add_jobs(self, new_jobs: Sequence[NewJob], *, output_ok: o.OutputFilter | None = None) -> list[str]:
        """:meth:`admit`, returning the job ids."""
        return self.admit(new_jobs, output_ok=output_ok).job_ids

    def add_job(self, new_job: NewJob, *, output_ok: o.OutputFilter | None = None) -> str:
        """:meth:`add_jobs` for one job, returning its id."""
        return self.add_jobs([new_job], output_ok=output_ok)[0]

    def create_batch(
        self, manifest_digest: str, name: str, source_name: str, new_jobs: Sequence[NewJob], *,
        output_ok: o.OutputFilter | None = None,
    ) -> tuple[str, bool]:
        """Write a batch and all its jobs in one transaction: ``(batch_id, True)``.

        If a batch with this manifest digest exists, write nothing and return
        ``(existing_id, False)``. Dedup as in :meth:`admit`.
        """
        admitted = self.admit_batch(manifest_digest, name, source_name, new_jobs, output_ok=output_ok)
        assert admitted.batch_id is not None
        return admitted.batch_id, admitted.created

    def admit_batch(
        self, manifest_digest: str, name: str, source_name: str, new_jobs: Sequence[NewJob], *,
        output_ok: o.OutputFilter | None = None, mark_sent: bool = False,
    ) -> Admission:
        """:meth:`admit` for a batch (one transaction, ``batch_index`` kept).

        A batch with this digest already there: nothing is written, and the admission lists its
        jobs and, to send, those whose message is not confirmed sent (see :meth:`confirm_sent`:
        how an interrupted submission is finished).
        """
        by_digest = select(batches.c.id).where(batches.c.manifest_digest == manifest_digest)
        try:
            with self._write() as conn:
                q.lock_dedup(conn)
                existing = conn.execute(by_digest).scalar_one_or_none()
                if existing is None:
                    batch_id = new_id()
                    conn.execute(insert(batches).values(
                        id=batch_id, manifest_digest=manifest_digest, name=name[:255],
                        source_name=_bare_name(source_name), created_at=self._now(), job_count=len(new_jobs)))
                    placed = [replace(j, batch_id=batch_id) for j in new_jobs]
                    admitted = self._insert_jobs(conn, placed, output_ok, mark_sent)
                    index = {j.id: j.batch_index if j.batch_index is not None else -1 for j in placed}
                    return replace(admitted, batch_id=batch_id, job_count=len(placed),
                                   to_send_index=[index[job_id] for job_id, _ in admitted.to_send])
        except sa_exc.IntegrityError:
            # Another producer committed the same digest between our check and our insert.
            with self._read() as conn:
                existing = conn.execute(by_digest).scalar_one_or_none()
            if existing is None:
                raise
        with self._read() as conn:
            ids = list(conn.execute(select(q.in_batch_order(existing).subquery().c.id)).scalars())
            pending = q.unconfirmed(conn, existing)
        return Admission(ids, [(job_id, route) for job_id, route, _ in pending], {}, {}, batch_id=existing,
                         created=False, to_send_index=[index for _, _, index in pending], job_count=len(ids))

    def confirm_sent(self, batch_id: str, through: int) -> None:
        """Record that the batch's messages up to ``batch_index`` ``through`` were published (never lowers it).

        Jobs after it count as possibly unsent: :meth:`admit_batch` of the same batch and the
        reaper (:meth:`stalled_batches`) send them again.
        """
        with self._write() as conn:
            q.confirm_sent(conn, batch_id, through)

    def _insert_jobs(self, conn: Connection, new_jobs: Sequence[NewJob], output_ok: o.OutputFilter | None,
                     mark_sent: bool, *, lock_dedup_first: bool = False) -> Admission:
        """Insert with dedup, inside a write transaction that holds the dedup lock (or takes it at the insert)."""
        now = self._now()
        plan = q.plan_dedup(conn, new_jobs, output_ok)
        q.insert_jobs(conn, new_jobs, plan, now, mark_sent=mark_sent, lock_dedup_first=lock_dedup_first)
        hits = [(j.id, d.original) for j, d in zip(new_jobs, plan, strict=True) if d.original is not None]
        self._answer_queued(conn, hits)
        return Admission(
            job_ids=[j.id for j in new_jobs],
            to_send=[(j.id, route_of(j.priority, j.model_name)) for j, d in zip(new_jobs, plan, strict=True)
                     if d.kind == "new"],
            answered={j.id: str(d.cache_of) for j, d in zip(new_jobs, plan, strict=True) if d.kind == "cache-hit"},
            following={j.id: str(d.cache_of) for j, d in zip(new_jobs, plan, strict=True) if d.kind == "follower"},
        )

    def _answer_queued(self, conn: Connection, hits: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Queued jobs -> succeeded, each with its original's output (event "cache-hit")."""
        now = self._now()
        self._transition_many(
            conn, JobStatus.QUEUED, JobStatus.SUCCEEDED, kind=q.CACHE_HIT_EVENT, worker=None,
            changes=[(job_id, q.answered_fields(original, now=now, queued=True), {"original": original["id"]})
                     for job_id, original in hits],
        )

    def _resolve_followers(self, conn: Connection, leader_id: str) -> None:
        """The leader succeeded: answer its queued followers from it (same transaction).

        A leader that rendered degraded answers no one: its followers are released to render.
        """
        followers = q.follower_ids(conn, leader_id)
        if followers:
            original = q.original_row(conn, leader_id)
            assert original is not None
            if original["degraded_reason"] is not None:
                q.release_followers(conn, leader_id, leader_status=JobStatus.SUCCEEDED, now=self._now(),
                                    reason="the leader rendered degraded")
                return
            self._answer_queued(conn, [(follower, original) for follower in followers])

    def _settle_followers(self, conn: Connection, leader_id: str, status: JobStatus) -> None:
        """The leader reached a final status: answer its queued followers (success) or release them."""
        if status is JobStatus.SUCCEEDED:
            self._resolve_followers(conn, leader_id)
        elif status in (JobStatus.FAILED, JobStatus.CANCELLED):
            q.release_followers(conn, leader_id, leader_status=status, now=self._now())

    # -- enqueue bookkeeping -------------------------------------------------------------------
    def unmark_enqueued(self, job_ids: Sequence[str]) -> None:
        """Clear the sent mark of queued jobs whose message could not be sent after all.

        See :meth:`admit`'s ``mark_sent``: the reaper sends them.
        """
        if job_ids:
            with self._write() as conn:
                q.unmark_enqueued(conn, job_ids)

    def mark_enqueued(self, job_ids: Sequence[str]) -> None:
        """Record that the jobs' wake-up messages were sent now."""
        if not job_ids:
            return
        with self._write() as conn:
            q.mark_enqueued(conn, job_ids, self._now())

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
        """Move the job to ``to`` along an allowed edge, appending an event of ``kind``.

        ``fields`` (other columns) are set in the same UPDATE. Returns the job as it is afterwards.
        Like the convenience methods, a job that succeeds answers its followers; one that fails or is
        cancelled releases them.
        """
        target = parse_status(str(to))
        with self._write() as conn:
            q.lock_dedup(conn, shared=True)
            self._transition(conn, job_id, target, kind=kind, worker=worker, detail=detail, fields=fields)
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
        guard: onestep.Guard | None = None,
    ) -> JobRecord | None:
        """The status change itself, inside the caller's write transaction.

        ``only_from`` narrows the allowed sources; ``guard`` is an extra condition of the UPDATE
        (e.g. ownership). Any exception raised here rolls the whole transaction back. Returns the
        changed row when the UPDATE gave it back (one allowed source), else None. A final status
        settles the job's queued followers (answered from a success, released by a failure or a
        cancel): the caller holds the dedup lock. On Postgres a change with one allowed source is
        ONE statement (:mod:`farm.ledger.onestep`).
        """
        _check_change(fields, kind)
        allowed = allowed_from(to)
        if only_from is not None:
            allowed = allowed & frozenset(only_from)
        if len(allowed) == 1 and conn.dialect.name == "postgresql":
            [source] = allowed
            statement, params = onestep.transition(job_id, source, to, fields=fields, guard=guard, at=self._now(),
                                                   kind=kind, worker=worker, detail=detail)
            row = direct.first(conn, statement, params)
            if row is None:
                self._refuse(conn, job_id, to)
            if to.terminal and row[onestep.FOLLOWERS]:
                self._settle_followers(conn, job_id, to)
            return JobRecord.from_row(row)
        current, record = self._change_row(conn, job_id, allowed, to, fields, guard)
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
        if to.terminal:
            q.notify_done(conn, [job_id], to)
            self._settle_followers(conn, job_id, to)
        return record

    def _change_row(self, conn: Connection, job_id: str, allowed: frozenset[JobStatus], to: JobStatus,
                    fields: Mapping[str, Any], guard: onestep.Guard | None) -> tuple[JobStatus, JobRecord | None]:
        """The conditional UPDATE of :meth:`_transition` (statement by statement): the source, the new row if known."""
        params = {} if guard is None else dict(guard.params)
        if len(allowed) == 1:
            # One possible source: the conditional UPDATE alone checks, locks and changes the row.
            [current] = allowed
            conditions = [jobs.c.id == job_id, jobs.c.status == current.value]
            if guard is not None:
                conditions.append(guard.clause)
            statement = update(jobs).where(*conditions).values(status=to.value, **fields).returning(*jobs.c)
            changed = conn.execute(statement, params).mappings().first()
            if changed is None:
                self._refuse(conn, job_id, to)
            return current, JobRecord.from_row(changed)
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
            conditions.append(guard.clause)
        if conn.execute(update(jobs).where(*conditions).values(status=to.value, **fields), params).rowcount != 1:
            raise IllegalTransition(job_id, current.value, to.value)
        return current, None

    @staticmethod
    def _refuse(conn: Connection, job_id: str, to: JobStatus) -> NoReturn:
        """The conditional UPDATE matched nothing: :class:`JobNotFound` or :class:`IllegalTransition`."""
        found = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).first()
        if found is None:
            raise JobNotFound(job_id)
        raise IllegalTransition(job_id, found.status, to.value)

    def _transition_many(self, conn: Connection, source: JobStatus, to: JobStatus, *, kind: str, worker: str | None,
                         changes: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any] | None]]) -> None:
        """:meth:`_transition` set-wise, for many jobs on the one edge ``source -> to``.

        ``changes`` are ``(job_id, fields, detail)`` (every job setting the same columns). The rows
        are locked and checked, updated conditionally on ``source`` (one UPDATE each, sent as
        executemany), and get one event each. A job not in ``source`` raises
        :class:`IllegalTransition` (and an unknown one :class:`JobNotFound`): the caller's
        transaction rolls back.
        """
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
        if to.terminal:
            q.notify_done(conn, [job_id for job_id, _, _ in changes], to)

    # -- worker life cycle ---------------------------------------------------------------------
    def claim(self, job_id: str, *, worker_host: str, worker_device: str, lease_s: float) -> JobRecord | None:
        """Queued -> running for ``worker_host``: attempts + 1, a lease of ``lease_s`` seconds.

        Returns None when the job is not queued or is a follower (a redelivered or duplicate
        message: drop it); raises :class:`JobNotFound` for an unknown id.
        """
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        try:
            with self._write_one() as conn:  # (the claim is one statement on Postgres)
                claimed = self._claim(conn, job_id, worker_host=worker_host, worker_device=worker_device,
                                      lease_s=lease_s)
                return claimed or self._job(conn, job_id)
        except IllegalTransition:
            return None

    def _claim(self, conn: Connection, job_id: str, *, worker_host: str, worker_device: str,
               lease_s: float) -> JobRecord | None:
        now = self._now()
        return self._transition(
            conn, job_id, JobStatus.RUNNING, kind="claimed", worker=worker_host,
            detail={"device": worker_device, "lease_s": lease_s},
            fields={
                "attempts": onestep.ATTEMPT_TAKEN,
                "worker_host": worker_host,
                "worker_device": worker_device,
                "lease_expires_at": now + timedelta(seconds=lease_s),
                "heartbeat_at": now,
                "started_at": now,
                "finished_at": None,
                "progress": 0.0,
            },
            only_from={JobStatus.QUEUED},
            guard=onestep.NOT_A_FOLLOWER,
        )

    def claim_more(self, compat_key: str, *, limit: int, worker_host: str, worker_device: str, lease_s: float,
                   priority: str | None = None) -> list[JobRecord]:
        """Claim up to ``limit`` more queued non-follower jobs with this compat key, in one transaction.

        Interactive first, then oldest, then manifest order; each with its own "claimed" event.
        On Postgres rows locked by a concurrent claimer are skipped, so two workers never get
        the same job.
        """
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
        """Hand a running job back (SIGTERM).

        Running -> queued, event "released", the attempt not counted (attempts - 1, never below
        0), ``enqueued_at`` NULL (the reaper sends it again). Only by its owner: None, nothing
        written, when the job is not running or ``worker_host`` does not own it.
        """
        try:
            with self._write() as conn:
                self._transition(
                    conn, job_id, JobStatus.QUEUED, kind="released", worker=worker_host,
                    detail={"reason": reason},
                    fields={
                        "attempts": onestep.ATTEMPT_GIVEN_BACK,
                        "enqueued_at": None,
                        "lease_expires_at": None,
                        "progress": 0.0,
                    },
                    only_from={JobStatus.RUNNING},
                    guard=onestep.owned_by(worker_host),
                )
                return self._job(conn, job_id)
        except IllegalTransition:
            return None

    def heartbeat(
        self, job_id: str, *, worker_host: str, lease_s: float, progress: float | None = None
    ) -> bool:
        """Extend the lease of a running job owned by ``worker_host`` (and record progress).

        False when the job is no longer running or belongs to another worker: stop rendering.
        Heartbeats write no event.
        """
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

    @staticmethod
    def _owner_guard(worker_host: str | None) -> onestep.Guard | None:
        return None if worker_host is None else onestep.owned_by(worker_host)

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
        degraded_reason: str | None = None,
    ) -> JobRecord:
        """Running -> succeeded with the render's results.

        With ``worker_host``, only if that worker still owns the job (else
        :class:`IllegalTransition`, nothing written). The output is recorded ``ok`` (verified now:
        its writer just wrote or checked it) and the job's queued followers are answered from it.
        ``degraded_reason``: it rendered at degraded settings (event "degraded" first; it answers
        no cache hit and no follower).

        On Postgres (a render as asked) the success — output row, job, event, announcement — is
        ONE statement committed on its own, so a producer waiting for the job is told at once; the
        followers are settled right after it (:meth:`_settle_after_commit`), and the reaper settles
        those of a worker that died in between (:meth:`settle_stranded_followers`). Otherwise one
        transaction does it all.
        """
        now = self._now()
        detail = {"output_uri": output_uri, "file_sha256": file_sha256, "frames_sha256": frames_sha256}
        fields = {
            "output_uri": output_uri, "file_sha256": file_sha256, "frames_sha256": frames_sha256,
            "effective_params": dict(effective_params), "weights_fingerprint": weights_fingerprint,
            "env_fingerprint": dict(env_fingerprint), "timings": dict(timings), "finished_at": now,
            "lease_expires_at": None, "progress": 1.0, "error_type": None, "error_message": None,
            "degraded_reason": degraded_reason,
        }
        if self._autocommit is not None and degraded_reason is None:
            output = {"uri": output_uri, "file_sha256": file_sha256, "frames_sha256": frames_sha256,
                      "size_bytes": size_bytes, "state": o.OK, "verified_at": now, "checked_at": now, "detail": None}
            return self._succeed_in_one(job_id, fields, detail, output, worker_host)
        with self._write() as conn:
            # (the statement that records the output takes the shared dedup lock first)
            o.record_written(conn, uri=output_uri, file_sha256=file_sha256, frames_sha256=frames_sha256,
                             size_bytes=size_bytes, now=now)
            if degraded_reason is not None:
                q.record_degraded(conn, job_id, reason=degraded_reason, effective=effective_params,
                                  worker=worker_host, now=now)
            record = self._transition(
                conn, job_id, JobStatus.SUCCEEDED, kind="succeeded", worker=worker_host, detail=detail,
                fields=fields, only_from={JobStatus.RUNNING}, guard=self._owner_guard(worker_host),
            )
            return record or self._job(conn, job_id)

    def _succeed_in_one(self, job_id: str, fields: Mapping[str, Any], detail: Mapping[str, Any],
                        output: Mapping[str, Any], worker_host: str | None) -> JobRecord:
        """:meth:`record_success` on Postgres: ONE statement (:func:`~farm.ledger.onestep.transition` + output)."""
        _check_change(fields, "succeeded")
        statement, params = onestep.transition(
            job_id, JobStatus.RUNNING, JobStatus.SUCCEEDED, fields=fields, guard=self._owner_guard(worker_host),
            at=output["checked_at"], kind="succeeded", worker=worker_host, detail=detail, output=output)
        with self._write_one() as conn:
            row = direct.first(conn, statement, params)
            if row is None:
                self._refuse(conn, job_id, JobStatus.SUCCEEDED)
        before = row[onestep.OUTPUT_BEFORE]
        try:
            if before is not None and before != o.OK:  # a missing or corrupt output written again
                with self._write() as conn:
                    o.restored(conn, output["uri"], output["file_sha256"], before, output["checked_at"],
                               besides=job_id)
            self._settle_after_commit(job_id, JobStatus.SUCCEEDED)
        except FarmError as exc:  # the success is recorded: the reaper settles what is left
            log.warning("job %s succeeded; its followers are left to the reaper (%s)", job_id, exc)
        return JobRecord.from_row(row)

    def _settle_after_commit(self, leader_id: str, status: JobStatus) -> None:
        """Settle the queued followers of a job whose final status is already committed.

        First wait for every producer that holds the dedup lock (it may be adding a follower
        to this job, having read it unfinished): taking the lock shared outside a transaction
        holds it for that one statement. A producer that takes the lock later sees the job
        finished and adds no follower; so the next statement sees every follower there is.
        """
        with self._write_one() as conn:
            q.lock_dedup(conn, shared=True)
        with self._read() as conn:
            if not q.follower_ids(conn, leader_id):
                return
        with self._write() as conn:
            q.lock_dedup(conn, shared=True)
            self._settle_followers(conn, leader_id, status)

    def settle_stranded_followers(self, limit: int = STRANDED_LIMIT) -> list[str]:
        """Settle queued followers whose leader already finished; the leaders' ids (the reaper).

        Left by a worker that died between recording a success and settling its followers.
        """
        with self._read() as conn:
            leaders = q.stranded_leaders(conn, limit)
        for leader_id, status in leaders:
            with self._write() as conn:
                q.lock_dedup(conn, shared=True)
                self._settle_followers(conn, leader_id, status)
        return [leader_id for leader_id, _ in leaders]

    def record_cache_hit(self, job_id: str, original_id: str, *, worker_host: str | None = None) -> JobRecord:
        """Running -> succeeded with the output of the succeeded job ``original_id``.

        A worker found, after loading the model, that the output exists; its followers are answered
        too. With ``worker_host``, only if that worker owns the job. :class:`IllegalTransition` when
        the original has not succeeded (nothing written).
        """
        with self._write() as conn:
            q.lock_dedup(conn, shared=True)
            original = q.original_row(conn, original_id)
            if original is None:
                raise JobNotFound(original_id)
            if original["status"] != JobStatus.SUCCEEDED.value or original_id == job_id:
                raise IllegalTransition(original_id, original["status"], JobStatus.SUCCEEDED.value)
            record = self._transition(
                conn, job_id, JobStatus.SUCCEEDED, kind=q.CACHE_HIT_EVENT, worker=worker_host,
                detail={"original": original_id},
                fields=q.answered_fields(original, now=self._now(), queued=False),
                only_from={JobStatus.RUNNING}, guard=self._owner_guard(worker_host),
            )
            return record or self._job(conn, job_id)

    def record_failure(
        self,
        job_id: str,
        *,
        error_type: str,
        error_message: str,
        retry: bool,
        worker_host: str | None = None,
    ) -> JobRecord:
        """A running job's attempt failed.

        With ``retry`` and attempts left: back to queued (event "retried", ``enqueued_at`` NULL:
        the reaper sends it again); otherwise failed for good (event "failed") and its followers
        are released.
        """
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
            return self._job(conn, job_id)

    def cancel(self, job_id: str, *, detail: Mapping[str, Any] | None = None) -> JobRecord:
        """Queued or running -> cancelled.

        A running worker sees it at its next heartbeat; the job's followers are released.
        """
        with self._write() as conn:
            q.lock_dedup(conn, shared=True)
            self._transition(
                conn, job_id, JobStatus.CANCELLED, kind="cancelled", worker=None, detail=detail,
                fields={"finished_at": self._now(), "lease_expires_at": None},
            )
            return self._job(conn, job_id)

    def requeue_expired(self, now: datetime | None = None) -> list[str]:
        """The reaper.

        Every running job whose lease expired before ``now`` goes back to queued
        (``enqueued_at`` NULL) if it has attempts left, else fails with
        ``error_type="LeaseExpired"`` (its followers released). Returns their ids. A job whose
        worker heartbeats in the meantime is left alone.
        """
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
                        guard=onestep.lease_expired_before(now),
                    )
                reaped.append(job_id)
            except IllegalTransition:
                continue  # finished, cancelled or heartbeated since we looked
        return reaped
