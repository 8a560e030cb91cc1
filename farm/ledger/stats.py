"""Aggregate read-only queries: what a Prometheus scrape needs from the ledger, and the farm's load.

Plain functions on a Connection; :class:`farm.ledger.Ledger` exposes them (``stats_snapshot``,
``pace``, ``farm_load``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection

from farm.kinds import Priority, WorkerState
from farm.ledger.models import jobs, workers
from farm.ledger.status import PRIORITIES, JobStatus

#: Workers silent for longer than this are left out of the per-worker series.
WORKER_FORGET_S = 86_400
#: Render-time window, and how far back in creation time a finished job is looked for (this keeps
#: the query on the (status, priority, created_at) index).
RECENT_WINDOW_S = 3_600
RECENT_LOOKBACK_S = 7 * 86_400
RECENT_LIMIT = 2_000


@dataclass
class WorkerRow:
    """A recently seen worker, as the metrics show it."""

    name: str
    device: str
    state: str
    last_seen_at: datetime
    consecutive_failures: int


@dataclass
class LedgerSnapshot:
    """What one scrape read from the ledger."""

    now: datetime
    job_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_queued: dict[str, datetime] = field(default_factory=dict)
    workers: list[WorkerRow] = field(default_factory=list)
    render_seconds: dict[str, list[float]] = field(default_factory=dict)


def snapshot(conn: Connection, now: datetime) -> LedgerSnapshot:
    """Job counts by status and priority, the oldest queued job per priority, and recently seen workers.

    Also recent render times per model (cache hits excluded).
    """
    snap = LedgerSnapshot(now=now)
    c = jobs.c
    counts = select(c.status, c.priority, func.count()).group_by(c.status, c.priority)
    snap.job_counts = {(str(s), str(p)): int(n) for s, p, n in conn.execute(counts)}
    oldest = (
        select(c.priority, func.min(c.created_at))
        .where(c.status == JobStatus.QUEUED.value)
        .group_by(c.priority)
    )
    snap.oldest_queued = {str(p): t for p, t in conn.execute(oldest) if t is not None}
    w = workers.c
    seen = select(w.name, w.device, w.state, w.last_seen_at, w.consecutive_failures).where(
        w.last_seen_at >= now - timedelta(seconds=WORKER_FORGET_S)
    )
    snap.workers = [WorkerRow(*row) for row in conn.execute(seen)]
    recent = (
        select(c.model_name, c.timings)
        .where(
            c.status == JobStatus.SUCCEEDED.value,
            c.priority.in_(PRIORITIES),
            c.created_at >= now - timedelta(seconds=RECENT_LOOKBACK_S),
            c.finished_at >= now - timedelta(seconds=RECENT_WINDOW_S),
            c.cache_of_job_id.is_(None),
        )
        .limit(RECENT_LIMIT)
    )
    for model, timings in conn.execute(recent):
        seconds = (timings or {}).get("render_s")
        if isinstance(seconds, int | float) and seconds >= 0:
            snap.render_seconds.setdefault(str(model), []).append(float(seconds))
    return snap


@dataclass(frozen=True)
class Pace:
    """How a group of jobs (a batch, or a list of ids) is going.

    What ``farm status``/``wait`` compute progress and an ETA from.
    """

    counts: dict[str, int]
    #: Sum of the progress (0..1) of the running jobs.
    running_progress: float
    #: Finished jobs a worker rendered (not cache hits or followers answered without a render).
    rendered_done: int
    #: When the first of the group's rendered jobs was claimed (None: none has started).
    first_started_at: datetime | None
    #: Workers that rendered (or are rendering) the group's jobs.
    workers: int


def pace(conn: Connection, *, batch_id: str | None = None, job_ids: list[str] | None = None) -> Pace:
    """The :class:`Pace` of one batch, or of the jobs ``job_ids`` (one query per chunk of ids)."""
    rendered = jobs.c.cache_of_job_id.is_(None) & jobs.c.started_at.is_not(None)
    finished = jobs.c.status.in_([JobStatus.SUCCEEDED.value, JobStatus.FAILED.value])
    running = jobs.c.status == JobStatus.RUNNING.value
    columns = [
        jobs.c.status, func.count(),
        func.coalesce(func.sum(case((running, jobs.c.progress), else_=0.0)), 0.0),
        func.sum(case((rendered & finished, 1), else_=0)),
        func.min(case((rendered, jobs.c.started_at), else_=None)),
    ]
    ids = job_ids or []
    wheres = [[jobs.c.batch_id == batch_id]] if batch_id is not None else [
        [jobs.c.id.in_(ids[i : i + 5000])] for i in range(0, len(ids), 5000)]
    counts = {s.value: 0 for s in JobStatus}
    progress, done, first = 0.0, 0, None
    hosts: set[str] = set()
    for where in wheres:
        for status, n, prog, rdone, started in conn.execute(select(*columns).where(*where).group_by(jobs.c.status)):
            counts[status] += int(n)
            progress += float(prog or 0.0)
            done += int(rdone or 0)
            if started is not None:
                started = started if started.tzinfo is not None else started.replace(tzinfo=UTC)
                first = started if first is None else min(first, started)
        query = select(jobs.c.worker_host).where(*where, rendered, jobs.c.worker_host.is_not(None)).distinct()
        hosts.update(h for (h,) in conn.execute(query))
    return Pace(counts, progress, done, first, len(hosts))


#: Worker states that serve jobs (a starting, stopped or circuit-open worker takes none).
SERVING_STATES: tuple[str, ...] = (WorkerState.IDLE.value, WorkerState.BUSY.value)


@dataclass(frozen=True)
class FarmLoad:
    """How loaded the farm is (:func:`farm_load`): what degradation under load decides from."""

    #: Seconds the oldest queued interactive job (not a follower) has waited; None: none waits.
    oldest_interactive_wait_s: float | None
    #: Live workers that serve jobs (idle or busy, seen within the liveness window).
    serving_workers: int
    #: Of those, the busy ones (state ``busy``, or owning a running job: the state lags a beat).
    busy_workers: int

    @property
    def busy_fraction(self) -> float | None:
        """``busy_workers / serving_workers``; None when no worker is live."""
        return self.busy_workers / self.serving_workers if self.serving_workers else None


def farm_load(conn: Connection, now: datetime, *, live_within_s: float,
              models: Collection[str] | None = None) -> FarmLoad:
    """The farm's :class:`FarmLoad` at ``now``, in one query (three scalar subqueries).

    The oldest queued interactive job (of ``models`` when given: the routes the caller's jobs
    share GPUs with) uses the (status, priority, created_at) index; a worker is live when it was
    seen within ``live_within_s`` seconds.
    """
    c, w = jobs.c, workers.c
    waiting = [c.status == JobStatus.QUEUED.value, c.priority == Priority.INTERACTIVE.value,
               c.cache_of_job_id.is_(None)]
    if models is not None:
        waiting.append(c.model_name.in_(sorted(models)))
    oldest = select(func.min(c.created_at)).where(*waiting).scalar_subquery()
    live = [w.last_seen_at >= now - timedelta(seconds=live_within_s), w.state.in_(SERVING_STATES)]
    owners = select(c.worker_host).where(c.status == JobStatus.RUNNING.value, c.worker_host.is_not(None))
    busy = (w.state == WorkerState.BUSY.value) | w.name.in_(owners)
    serving = select(func.count()).select_from(workers).where(*live).scalar_subquery()
    busy_count = select(func.count()).select_from(workers).where(*live, busy).scalar_subquery()
    row = conn.execute(select(oldest.label("oldest"), serving.label("serving"), busy_count.label("busy"))).one()
    wait = None
    if row.oldest is not None:
        since = row.oldest if row.oldest.tzinfo is not None else row.oldest.replace(tzinfo=UTC)
        wait = max(0.0, (now - since).total_seconds())
    return FarmLoad(wait, int(row.serving or 0), int(row.busy or 0))
