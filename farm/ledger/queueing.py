"""The farm's set-wise ledger queries.

Dedup of new jobs, the enqueue backlog, claiming compatible jobs, followers, and the ``workers`` /
``models`` upserts.

Plain functions over a :class:`~sqlalchemy.engine.Connection` inside the caller's transaction.
Only :class:`farm.ledger.manager.Ledger` calls them (it stays the one public door); none of them
changes a job's status — that is the gateway's ``_transition``.

Dedup (see ``docs/farm-design.md``): for each new job with ``no_cache`` false, in call order,

1. *cache hit* — the model has a registered weights fingerprint F and a succeeded job with the same
   ``job_key`` rendered with F exists whose output is in state ``ok`` (and, when the producer
   passes ``output_ok``, passes its quick look at the file): the new job is answered from it;
2. *follower* — else a queued or running non-follower job with the same ``job_key`` (in the
   ledger, or earlier in the same call) is its *leader*;
3. else a normal job (and the leader of later jobs with its key in the same call).

Lookups are one query per chunk of distinct keys, never one per job. Producers are serialised by
:func:`lock_dedup` (Postgres: a transaction-level advisory lock; SQLite: the write transaction's
``BEGIN IMMEDIATE``); the gateway's paths that resolve or release followers take the same lock
shared, so a follower is never added to a leader that has just finished.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

import orjson
from sqlalchemy import JSON, Select, Table, bindparam, case, func, insert, literal, select, text, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.sql.elements import ColumnElement

from farm.kinds import route_of, route_parts
from farm.ledger import direct
from farm.ledger.models import batches, events, jobs, models, outputs, workers
from farm.ledger.records import NewJob, OutputRecord
from farm.ledger.status import INITIAL, WORKER_STATES, JobStatus
from farm.ledger.types import UTCDateTime

#: Postgres advisory lock key (transaction level) that serialises dedup: "farmdedu" in ASCII.
PG_DEDUP_LOCK_KEY = 0x6661726D_64656475
#: Most values bound in one IN (...) list (far below SQLite's and Postgres' parameter limits).
IN_CHUNK = 5_000
#: The job columns a cache hit copies from the job that answers it.
OUTPUT_COLUMNS: tuple[str, ...] = (
    "output_uri",
    "file_sha256",
    "frames_sha256",
    "effective_params",
    "weights_fingerprint",
    "env_fingerprint",
)
#: Event kind of a job answered from another job's output.
CACHE_HIT_EVENT = "cache-hit"
#: Event kind of a follower whose leader failed or was cancelled (it becomes a normal job).
UNFOLLOWED_EVENT = "leader-lost"

T = TypeVar("T")


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items``, at most ``size`` long each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def lock_dedup(conn: Connection, *, shared: bool = False) -> None:
    """Take the dedup lock for the rest of the transaction (Postgres; SQLite's write transaction is already exclusive).

    Producers take it exclusive; follower resolution takes it shared.
    """
    if conn.dialect.name != "postgresql":
        return
    conn.execute(_LOCK_SHARED if shared else _LOCK, {"key": PG_DEDUP_LOCK_KEY})


_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_LOCK_SHARED = text("SELECT pg_advisory_xact_lock_shared(:key)")


def queue_order() -> list[ColumnElement[Any]]:
    """Interactive before batch, then oldest, then manifest order (ties by id)."""
    return [
        case((jobs.c.priority == "interactive", 0), else_=1),
        jobs.c.created_at,
        jobs.c.batch_index.asc().nulls_last(),
        jobs.c.id,
    ]


def in_batch_order(batch_id: str | None, *, status: JobStatus | None = None) -> Select[Any]:
    """Jobs (of one batch, of one status) by ``batch_index``, then creation, then id."""
    query = select(jobs)
    if batch_id is not None:
        query = query.where(jobs.c.batch_id == batch_id)
    if status is not None:
        query = query.where(jobs.c.status == status.value)
    return query.order_by(jobs.c.batch_index.asc().nulls_last(), jobs.c.created_at, jobs.c.id)


# -- dedup ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What dedup made of one new job: ``kind`` and the job it defers to (``cache_of``)."""

    kind: Literal["new", "follower", "cache-hit"]
    cache_of: str | None = None
    #: The answering job's output columns (cache hits only).
    original: Mapping[str, Any] | None = None


NEW = Decision("new")


def plan_dedup(conn: Connection, new_jobs: Sequence[NewJob],
               output_ok: Callable[[OutputRecord], bool] | None = None) -> list[Decision]:
    """One :class:`Decision` per new job (same order). Call under :func:`lock_dedup`.

    Only outputs in state ``ok`` answer cache hits, and, with ``output_ok``, only those it vouches
    for (a producer's quick look at the file); the others leave the job to a worker, which checks
    the file thoroughly before answering from it.
    """
    keys = sorted({j.job_key for j in new_jobs if not j.no_cache})
    if not keys:
        return [NEW] * len(new_jobs)
    fingerprints = _weights_fingerprints(conn, new_jobs)
    originals = _cache_originals(conn, keys, set(fingerprints.values()), output_ok) if fingerprints else {}
    leaders = _active_leaders(conn, keys)

    plan: list[Decision] = []
    for job in new_jobs:
        if job.no_cache:
            plan.append(NEW)
            leaders.setdefault(job.job_key, job.id)
            continue
        fingerprint = fingerprints.get(job.model_name)
        original = originals.get((job.job_key, fingerprint)) if fingerprint is not None else None
        if original is not None:
            plan.append(Decision("cache-hit", cache_of=original["id"], original=original))
        elif job.job_key in leaders:
            plan.append(Decision("follower", cache_of=leaders[job.job_key]))
        else:
            plan.append(NEW)
            leaders[job.job_key] = job.id
    return plan


def _weights_fingerprints(conn: Connection, new_jobs: Sequence[NewJob]) -> dict[str, str]:
    """The registered weights fingerprint of each model the cacheable new jobs name (when it has one)."""
    model_names = sorted({j.model_name for j in new_jobs if not j.no_cache})
    query_models = select(models.c.name, models.c.weights_fingerprint).where(models.c.name.in_(model_names))
    return {name: fp for name, fp in conn.execute(query_models)}


def _cache_originals(conn: Connection, keys: Sequence[str], wanted: set[str],
                     output_ok: Callable[[OutputRecord], bool] | None) -> dict[tuple[str, str], dict[str, Any]]:
    """The job that answers a cache hit, by ``(job_key, weights fingerprint)``.

    Succeeded, rendered with one of the ``wanted`` fingerprints, its output ``ok`` (and vouched for
    by ``output_ok``).
    """
    originals: dict[tuple[str, str], dict[str, Any]] = {}
    # Rendered jobs before cache hits (the root output), then the most recent.
    order = [case((jobs.c.cache_of_job_id.is_(None), 0), else_=1), jobs.c.finished_at.desc(), jobs.c.id]
    columns = [jobs.c.id, jobs.c.job_key, *(jobs.c[name] for name in OUTPUT_COLUMNS), *output_columns()]
    vouched: dict[str, bool] = {}
    for part in chunks(keys):
        query = (
            select(*columns)
            .join(outputs, outputs.c.uri == jobs.c.output_uri)
            .where(
                jobs.c.job_key.in_(part),
                jobs.c.status == JobStatus.SUCCEEDED.value,
                jobs.c.weights_fingerprint.in_(wanted),
                jobs.c.degraded_reason.is_(None),  # a degraded render answers no one
                outputs.c.state == "ok",
            )
            .order_by(*order)
        )
        for row in conn.execute(query).mappings():
            found = (row["job_key"], row["weights_fingerprint"])
            if found in originals:
                continue
            uri = row["output_uri"]
            if uri not in vouched:
                vouched[uri] = output_ok is None or output_ok(output_record(row))
            if vouched[uri]:
                originals[found] = {name: row[name] for name in ("id", "job_key", *OUTPUT_COLUMNS)}
    return originals


def _active_leaders(conn: Connection, keys: Sequence[str]) -> dict[str, str]:
    """The leader of each key: its oldest queued or running non-follower job in the ledger."""
    leaders: dict[str, str] = {}
    for part in chunks(keys):
        query = (
            select(jobs.c.id, jobs.c.job_key)
            .where(
                jobs.c.job_key.in_(part),
                jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
                jobs.c.cache_of_job_id.is_(None),
            )
            .order_by(jobs.c.created_at, jobs.c.id)
        )
        for job_id, job_key in conn.execute(query):
            leaders.setdefault(job_key, job_id)
    return leaders


def output_columns() -> list[Any]:
    """The ``outputs`` columns, labelled ``out_<name>`` (for joins with ``jobs``)."""
    return [column.label(f"out_{column.name}") for column in outputs.c]


def output_record(row: Mapping[Any, Any]) -> OutputRecord:
    """An :class:`OutputRecord` from a row selected with :func:`output_columns`."""
    return OutputRecord.from_row({column.name: row[f"out_{column.name}"] for column in outputs.c})


def insert_jobs(conn: Connection, new_jobs: Sequence[NewJob], plan: Sequence[Decision], now: datetime, *,
                mark_sent: bool = False, lock_dedup_first: bool = False) -> None:
    """Insert the jobs (all queued; followers with their leader) and their "created" events.

    COPY on Postgres for large sets. ``mark_sent``: the jobs that will get a message (not
    followers, not cache hits) are recorded as sent now — the caller sends right after the commit
    and clears the mark of any it could not send. ``lock_dedup_first``: one job on Postgres, whose
    insert takes the dedup lock itself (:func:`lock_dedup`, one round trip less).
    """
    rows = []
    trail = []
    for j, decision in zip(new_jobs, plan, strict=True):
        follows = decision.cache_of if decision.kind == "follower" else None
        sent_at = now if mark_sent and decision.kind == "new" else None
        rows.append(
            {
                "id": j.id,
                "job_key": j.job_key,
                "batch_id": j.batch_id,
                "status": INITIAL.value,
                "prompt": j.prompt,
                "negative_prompt": j.negative_prompt,
                "seed": j.seed,
                "seed_strategy": j.seed_strategy,
                "params": dict(j.params),
                "requested_params": dict(j.requested_params),
                "model_name": j.model_name,
                "priority": j.priority,
                "attempts": 0,
                "max_attempts": j.max_attempts,
                "created_at": now,
                "tags": dict(j.tags),
                "starred": False,
                "progress": 0.0,
                "parent_job_id": j.parent_job_id,
                "cache_of_job_id": follows,
                "batch_index": j.batch_index,
                "compat_key": j.compat_key,
                "enqueued_at": sent_at,
                "no_cache": j.no_cache,
                "allow_degrade": j.allow_degrade,
            }
        )
        detail: dict[str, Any] = {"batch_id": j.batch_id, "parent_job_id": j.parent_job_id}
        if follows is not None:
            detail["follows"] = follows
        trail.append(
            {
                "job_id": j.id,
                "at": now,
                "from_status": None,
                "to_status": INITIAL.value,
                "kind": "created",
                "worker": None,
                "detail": detail,
            }
        )
    if conn.dialect.name == "postgresql" and len(rows) == 1:
        # One job (an interactive submit): the job and its event in one statement.
        params: dict[str, Any] = {f"j_{name}": value for name, value in rows[0].items()}
        params.update({f"e_{name}": value for name, value in trail[0].items() if name != "job_id"})
        if lock_dedup_first:
            params["lock_key"] = PG_DEDUP_LOCK_KEY
        statement = _one_job_statement(tuple(rows[0]), tuple(n for n in trail[0] if n != "job_id"), lock_dedup_first)
        direct.execute(conn, statement, params)
        return
    if lock_dedup_first:
        lock_dedup(conn)
    copy_rows(conn, jobs, rows)
    copy_rows(conn, events, trail)


_one_job_statements: dict[tuple[tuple[str, ...], tuple[str, ...], bool], Any] = {}


def _one_job_statement(job_columns: tuple[str, ...], event_columns: tuple[str, ...], locked: bool) -> Any:
    """``WITH added AS (INSERT INTO jobs ... RETURNING id) INSERT INTO events ... SELECT added.id, ... FROM added``.

    ``locked``: the job's row is selected from a CTE that takes the dedup lock (exclusive) first.
    Built once per shape.
    """
    key = (job_columns, event_columns, locked)
    statement = _one_job_statements.get(key)
    if statement is None:
        row = [bindparam(f"j_{name}", type_=jobs.c[name].type) for name in job_columns]
        if locked:
            lock = select(func.pg_advisory_xact_lock(bindparam("lock_key")).label("locked")).cte("locked")
            added = insert(jobs).from_select(list(job_columns), select(*row).select_from(lock))
        else:
            added = insert(jobs).values(dict(zip(job_columns, row, strict=True)))
        added_cte = added.returning(jobs.c.id).cte("added")
        statement = insert(events).from_select(
            ["job_id", *event_columns],
            select(added_cte.c.id, *(bindparam(f"e_{name}", type_=events.c[name].type) for name in event_columns)),
        )
        _one_job_statements[key] = statement
    return statement


#: Fewer rows than this are inserted with INSERT (a COPY's set-up costs more than it saves).
COPY_MIN_ROWS = 200


def copy_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``table``.

    Postgres ``COPY ... FROM STDIN`` for large sets (JSON columns as JSON text, in the caller's
    transaction), else one multi-row INSERT.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql" or len(rows) < COPY_MIN_ROWS:
        conn.execute(insert(table), list(rows))
        return
    from psycopg import sql

    columns = list(rows[0])
    as_json = {c.name for c in table.c if isinstance(c.type, JSON)}
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([orjson.dumps(row[c]).decode() if c in as_json and row[c] is not None else row[c]
                            for c in columns])


def answered_fields(original: Mapping[str, Any], *, now: datetime, queued: bool) -> dict[str, Any]:
    """The columns a cache hit sets: the original's outputs, ``timings={"cache_hit": true}``."""
    values: dict[str, Any] = {name: original[name] for name in OUTPUT_COLUMNS}
    values.update(
        cache_of_job_id=original["id"],
        timings={"cache_hit": True},
        finished_at=now,
        lease_expires_at=None,
        progress=1.0,
        error_type=None,
        error_message=None,
    )
    if queued:
        values["started_at"] = now
    return values


def lock_statuses(conn: Connection, job_ids: Sequence[str]) -> dict[str, str]:
    """``{id: status}`` of these jobs, their rows locked for the transaction (Postgres)."""
    found: dict[str, str] = {}
    for part in chunks(list(job_ids)):
        query = select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(part)).with_for_update()
        found.update((job_id, status) for job_id, status in conn.execute(query))
    return found


def update_each(conn: Connection, source: JobStatus, to: JobStatus,
                changes: Sequence[tuple[str, Mapping[str, Any]]]) -> int:
    """One conditional ``UPDATE jobs SET status = to, ... WHERE id = :id AND status = source`` per job.

    Executemany: every job sets the same columns. Returns how many rows matched.
    """
    names = sorted(changes[0][1])
    values: dict[str, Any] = {name: bindparam(f"v_{name}", type_=jobs.c[name].type) for name in names}
    statement = (
        update(jobs)
        .where(jobs.c.id == bindparam("v_job_id"), jobs.c.status == source.value)
        .values(status=to.value, **values)
    )
    params = [{"v_job_id": job_id, **{f"v_{name}": fields[name] for name in names}} for job_id, fields in changes]
    return int(conn.execute(statement, params).rowcount)


def original_row(conn: Connection, job_id: str) -> dict[str, Any] | None:
    """The id, status, ``degraded_reason`` and output columns of the job that answers others."""
    columns = [jobs.c.id, jobs.c.status, jobs.c.degraded_reason, *(jobs.c[name] for name in OUTPUT_COLUMNS)]
    row = conn.execute(select(*columns).where(jobs.c.id == job_id)).mappings().first()
    return None if row is None else dict(row)


def jobs_by_id(conn: Connection, job_ids: Sequence[str]) -> list[RowMapping]:
    """The ``jobs`` rows with these ids (unknown ids are left out; any order)."""
    found: list[RowMapping] = []
    for part in chunks(list(job_ids)):
        found.extend(conn.execute(select(jobs).where(jobs.c.id.in_(part))).mappings())
    return found


def worker_values(name: str, now: datetime, **fields: Any) -> dict[str, Any]:
    """A ``workers`` row; ``started_at`` and ``last_seen_at`` are ``now``."""
    state = fields["state"]
    if state not in WORKER_STATES:
        raise ValueError(f"unknown worker state {state!r}; valid: {', '.join(WORKER_STATES)}")
    detail = fields.get("detail")
    return {**fields, "name": name, "detail": dict(detail) if detail is not None else None,
            "started_at": now, "last_seen_at": now}


# -- followers -----------------------------------------------------------------------------------


def follower_ids(conn: Connection, leader_id: str) -> list[str]:
    """The queued followers of ``leader_id``, oldest first."""
    query = (
        select(jobs.c.id)
        .where(jobs.c.cache_of_job_id == leader_id, jobs.c.status == JobStatus.QUEUED.value)
        .order_by(jobs.c.created_at, jobs.c.id)
    )
    return list(conn.execute(query).scalars())


def stranded_leaders(conn: Connection, limit: int) -> list[tuple[str, JobStatus]]:
    """Finished jobs that still have queued followers, with their final status.

    Found from the queued followers (few), never by scanning finished jobs (many).
    """
    leader = jobs.alias("leader")
    query = (
        select(leader.c.id, leader.c.status)
        .distinct()
        .select_from(jobs.join(leader, leader.c.id == jobs.c.cache_of_job_id))
        .where(jobs.c.status == JobStatus.QUEUED.value,
               leader.c.status.in_([s.value for s in JobStatus if s.terminal]))
        .order_by(leader.c.id)
        .limit(limit)
    )
    return [(job_id, JobStatus(status)) for job_id, status in conn.execute(query)]


def release_followers(conn: Connection, leader_id: str, *, leader_status: JobStatus, now: datetime,
                      reason: str | None = None) -> list[str]:
    """Make the queued followers of a failed, cancelled (or degraded) leader normal jobs again.

    ``cache_of_job_id`` and ``enqueued_at`` NULL: the reaper enqueues them; one event each (with
    ``reason``, when given, in its detail).
    """
    released = follower_ids(conn, leader_id)
    if not released:
        return []
    for part in chunks(released):
        conn.execute(
            update(jobs)
            .where(
                jobs.c.id.in_(part),
                jobs.c.cache_of_job_id == leader_id,
                jobs.c.status == JobStatus.QUEUED.value,
            )
            .values(cache_of_job_id=None, enqueued_at=None)
        )
    conn.execute(
        insert(events),
        [
            {
                "job_id": job_id,
                "at": now,
                "from_status": JobStatus.QUEUED.value,
                "to_status": JobStatus.QUEUED.value,
                "kind": UNFOLLOWED_EVENT,
                "worker": None,
                "detail": {"leader": leader_id, "leader_status": leader_status.value,
                           **({"reason": reason} if reason else {})},
            }
            for job_id in released
        ],
    )
    return released


#: Event kind of a job recorded with a degraded render (detail: the reason, requested vs effective).
DEGRADED_EVENT = "degraded"
#: The settings a degraded render may change (load: steps, step caching, preset; out of memory: size).
DEGRADED_FIELDS: tuple[str, ...] = ("steps", "cache_threshold", "preset", "width", "height", "num_frames")


def record_degraded(conn: Connection, job_id: str, *, reason: str, effective: Mapping[str, Any],
                    worker: str | None, now: datetime) -> None:
    """Append the "degraded" event of a job whose degraded render is being recorded (same transaction).

    Its detail: the reason, and the settings that differ, as requested (the canonical spec) and as
    rendered.
    """
    row = conn.execute(select(jobs.c.params, jobs.c.status).where(jobs.c.id == job_id)).first()
    if row is None:
        return  # the transition that follows raises JobNotFound
    asked = dict(row.params or {})
    changed = [name for name in DEGRADED_FIELDS if asked.get(name) != effective.get(name)]
    conn.execute(insert(events).values(
        job_id=job_id, at=now, from_status=row.status, to_status=row.status, kind=DEGRADED_EVENT, worker=worker,
        detail={"reason": reason, "requested": {name: asked.get(name) for name in changed},
                "effective": {name: effective.get(name) for name in changed}}))


# -- enqueue and claim ---------------------------------------------------------------------------


def to_enqueue(
    conn: Connection,
    *,
    batch_id: str | None,
    job_ids: Sequence[str] | None,
    stale_before: datetime | None,
    limit: int | None,
    lost_before: Mapping[str, datetime] | None = None,
) -> list[tuple[str, str]]:
    """``(id, route)`` of queued non-follower jobs whose message is due again.

    Those never sent, sent before ``stale_before``, or (``lost_before``: route -> time) of that
    route (class and model) and sent before that time.
    """
    conditions: list[ColumnElement[bool]] = [
        jobs.c.status == JobStatus.QUEUED.value,
        jobs.c.cache_of_job_id.is_(None),
    ]
    due: ColumnElement[bool] = jobs.c.enqueued_at.is_(None)
    if stale_before is not None:
        due = due | (jobs.c.enqueued_at < stale_before)
    for route, before in (lost_before or {}).items():
        priority, model = route_parts(route)
        due = due | ((jobs.c.priority == priority) & (jobs.c.model_name == model) & (jobs.c.enqueued_at < before))
    conditions.append(due)
    if batch_id is not None:
        conditions.append(jobs.c.batch_id == batch_id)
    columns = (jobs.c.id, jobs.c.priority, jobs.c.model_name, jobs.c.created_at, jobs.c.batch_index)
    base = select(*columns).where(*conditions)
    if job_ids is None:
        query = base.order_by(*queue_order())
        if limit is not None:
            query = query.limit(limit)
        return [(r.id, route_of(r.priority, r.model_name)) for r in conn.execute(query)]
    found: list[Any] = []
    for part in chunks(list(dict.fromkeys(job_ids))):
        found.extend(conn.execute(base.where(jobs.c.id.in_(part))).all())
    # The same order as the SQL one (interactive, created_at, batch_index nulls last, id).
    found.sort(key=lambda r: (r.priority != "interactive", r.created_at, r.batch_index is None,
                              r.batch_index or 0, r.id))
    if limit is not None:
        found = found[:limit]
    return [(r.id, route_of(r.priority, r.model_name)) for r in found]


#: Postgres channel on which a committed transaction announces jobs that reached a final status
#: (payload: :func:`done_payload`); :meth:`farm.ledger.reads.LedgerReads.listen` listens to it.
DONE_CHANNEL = "farm_job_done"


def done_payload(job_id: str, status: JobStatus) -> str:
    """The announcement of a job that reached the final ``status``: ``"<job id> <status>"``."""
    return f"{job_id} {status.value}"


def parse_done(payload: str) -> tuple[str, JobStatus | None]:
    """``(job id, final status)`` of an announcement (status None: not one, e.g. an older writer's bare id)."""
    job_id, _, status = payload.partition(" ")
    try:
        found = JobStatus(status)
    except ValueError:
        return job_id, None
    return job_id, found if found.terminal else None


def notify_done(conn: Connection, job_ids: Sequence[str], status: JobStatus) -> None:
    """Announce, when the transaction commits, that these jobs reached the final ``status``.

    Postgres ``NOTIFY``: delivered only on commit, never for a rolled-back change. SQLite: nothing
    (waiters poll).
    """
    if conn.dialect.name != "postgresql" or not job_ids:
        return
    for part in chunks(list(job_ids)):
        conn.execute(_NOTIFY_DONE, {"channel": DONE_CHANNEL, "status": f" {status.value}", "ids": list(part)})


_NOTIFY_DONE = text("SELECT pg_notify(:channel, x || :status) FROM unnest(CAST(:ids AS text[])) AS x")


def unmark_enqueued(conn: Connection, job_ids: Sequence[str]) -> None:
    """Clear the sent mark of queued jobs whose message could not be sent (the reaper sends them)."""
    for part in chunks(list(job_ids)):
        conn.execute(update(jobs).where(jobs.c.id.in_(part), jobs.c.status == JobStatus.QUEUED.value)
                     .values(enqueued_at=None))


def unconfirmed(conn: Connection, batch_id: str) -> list[tuple[str, str, int]]:
    """``(id, route, batch_index)`` of the batch's queued non-follower jobs whose message is not confirmed sent.

    Never sent, or after the batch's ``sent_through`` (in batch order).
    """
    through = select(batches.c.sent_through).where(batches.c.id == batch_id).scalar_subquery()
    query = (
        select(jobs.c.id, jobs.c.priority, jobs.c.model_name, jobs.c.batch_index)
        .where(jobs.c.batch_id == batch_id, jobs.c.status == JobStatus.QUEUED.value,
               jobs.c.cache_of_job_id.is_(None), jobs.c.enqueued_at.is_(None) | (jobs.c.batch_index > through))
        .order_by(jobs.c.batch_index.asc().nulls_last(), jobs.c.id)
    )
    return [(r.id, route_of(r.priority, r.model_name), r.batch_index if r.batch_index is not None else -1)
            for r in conn.execute(query)]


def confirm_sent(conn: Connection, batch_id: str, through: int) -> None:
    """Raise the batch's ``sent_through`` to ``through`` (never lower it)."""
    conn.execute(update(batches).where(batches.c.id == batch_id, batches.c.sent_through < through)
                 .values(sent_through=through))


def stalled_batches(conn: Connection, before: datetime, limit: int) -> list[str]:
    """Batches created before ``before`` whose messages were not all confirmed sent."""
    query = (select(batches.c.id).where(batches.c.sent_through < batches.c.job_count - 1,
                                        batches.c.created_at < before)
             .order_by(batches.c.created_at).limit(limit))
    return list(conn.execute(query).scalars())


def mark_enqueued(conn: Connection, job_ids: Sequence[str], now: datetime) -> None:
    """Record the jobs as sent at ``now`` (``enqueued_at``)."""
    for part in chunks(list(job_ids)):
        conn.execute(update(jobs).where(jobs.c.id.in_(part)).values(enqueued_at=now))


def claimable_ids(conn: Connection, compat_key: str, *, limit: int, priority: str | None) -> list[str]:
    """Up to ``limit`` queued non-follower jobs with this compat key, in queue order, locked for this transaction.

    Postgres: rows other claimers hold are skipped.
    """
    query = select(jobs.c.id).where(
        jobs.c.status == JobStatus.QUEUED.value,
        jobs.c.compat_key == compat_key,
        jobs.c.cache_of_job_id.is_(None),
    )
    if priority is not None:
        query = query.where(jobs.c.priority == priority)
    query = query.order_by(*queue_order()).limit(limit).with_for_update(skip_locked=True)
    return list(conn.execute(query).scalars())


# -- workers and models --------------------------------------------------------------------------


def upsert(conn: Connection, table: Any, values: Mapping[str, Any], key: str,
           update_values: Mapping[str, Any]) -> None:
    """INSERT ... ON CONFLICT (key) DO UPDATE, on Postgres and SQLite."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    statement = dialect_insert(table).values(**values)
    statement = statement.on_conflict_do_update(index_elements=[table.c[key]], set_=dict(update_values))
    conn.execute(statement)


def upsert_worker(conn: Connection, values: Mapping[str, Any]) -> None:
    """Insert the worker or update every given field and ``last_seen_at``.

    ``started_at`` is kept unless the worker reports ``starting`` or a new pid (a restart).
    """
    table = workers
    changed: dict[str, Any] = {name: value for name, value in values.items() if name != "name"}
    if values["state"] != "starting":
        started = literal(values["started_at"], UTCDateTime())
        changed["started_at"] = case((table.c.pid != values["pid"], started), else_=table.c.started_at)
    upsert(conn, table, values, "name", changed)


def upsert_model(conn: Connection, values: Mapping[str, Any]) -> None:
    """Insert the ``models`` row, or update every given field of the existing one."""
    changed = {name: value for name, value in values.items() if name != "name"}
    upsert(conn, models, values, "name", changed)

