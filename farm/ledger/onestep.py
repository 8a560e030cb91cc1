"""The hot writes of a job's life in one statement each, on Postgres.

A claim, a success and a failure happen once per job on the farm's critical path, and each used
to be a conditional ``UPDATE``, an event ``INSERT`` and (for a final status) a ``NOTIFY`` and a
look for followers: four round trips. On Postgres a data-modifying ``WITH`` does all of it in one
statement, atomically on its own:

.. code-block:: sql

    WITH changed AS (UPDATE jobs SET status = :to, ... WHERE id = :id AND status = :from [AND guard]
                     RETURNING jobs.*),
         trail AS (INSERT INTO events (job_id, at, from_status, to_status, kind, worker, detail)
                   SELECT changed.id, :at, :from, :to, :kind, :worker, :detail FROM changed)
    SELECT changed.*,                                         -- the job as it is now
           pg_notify(:channel, changed.id || ' ' || :to),     -- final statuses only: sent on commit
           (SELECT count(*) FROM jobs WHERE cache_of_job_id = changed.id AND status = 'queued')
    FROM changed

No row back: the UPDATE matched nothing (unknown job, another status, the guard refused) and
nothing was written — the event is inserted only from the changed row, the notification only
sent for it. The follower count is read in the same statement (the caller holds the dedup lock,
taken by an earlier statement, so every follower committed before it is seen) and spares the
follower queries when there are none, which is nearly always. SQLite runs the same change as
separate statements inside its write transaction (see ``Ledger._transition``).

Building such a statement costs more than running it (SQLAlchemy coerces every column and value),
so each *shape* — source and target status, the names of the columns set, the guard — is built
once with named parameters and kept (:data:`TEMPLATES_KEPT` shapes at most); a call only fills
in the values. Columns set to a SQL expression (:data:`ATTEMPT_TAKEN`) and guards (:class:`Guard`)
are part of the shape: use the module-level ones, whose parameters are values.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, case, column, func, insert, select, table, update
from sqlalchemy.sql.elements import ClauseElement, ColumnElement

from farm.ledger.models import events, jobs, outputs
from farm.ledger.outputs import state_before, upsert_from
from farm.ledger.queueing import DONE_CHANNEL
from farm.ledger.status import JobStatus
from farm.ledger.types import UTCDateTime

#: The label of the queued-follower count in a final transition's row.
FOLLOWERS = "queued_followers"
#: The label of the output's state before a success (None: a new output).
OUTPUT_BEFORE = "output_before"
#: How many statement shapes are kept (the farm uses about ten).
TEMPLATES_KEPT = 64
_EVENT_COLUMNS = ("at", "from_status", "to_status", "kind", "worker", "detail")
_OUTPUT_COLUMNS = tuple(c.name for c in outputs.c)
#: The ``changed`` CTE as the statements refer to it: a plain named table with the job's columns
#: and types, built once (proxying a CTE's 42 columns on every call costs milliseconds).
_CHANGED = table("changed", *(column(c.name, c.type) for c in jobs.c))

#: ``attempts`` + 1 (a claim).
ATTEMPT_TAKEN: ColumnElement[Any] = jobs.c.attempts + 1
#: ``attempts`` - 1, never below 0 (a job handed back: the attempt does not count).
ATTEMPT_GIVEN_BACK: ColumnElement[Any] = case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0)


@dataclass(frozen=True)
class Guard:
    """An extra condition of a status change: ``clause`` (built once) with its ``params`` for this call."""

    clause: ColumnElement[bool]
    params: Mapping[str, Any] = field(default_factory=dict)


_OWNED_BY = jobs.c.worker_host == bindparam("guard_worker_host")
_LEASE_EXPIRED_BEFORE = jobs.c.lease_expires_at < bindparam("guard_before", type_=UTCDateTime())
#: Not a follower (a follower is never claimed: it waits for its leader).
NOT_A_FOLLOWER = Guard(jobs.c.cache_of_job_id.is_(None))


def owned_by(worker_host: str) -> Guard:
    """Only while ``worker_host`` owns the job."""
    return Guard(_OWNED_BY, {"guard_worker_host": worker_host})


def lease_expired_before(moment: datetime) -> Guard:
    """Only while the job's lease expired before ``moment`` (the reaper)."""
    return Guard(_LEASE_EXPIRED_BEFORE, {"guard_before": moment})


_templates: OrderedDict[tuple[Any, ...], Select[Any]] = OrderedDict()
_templates_lock = threading.Lock()


def transition(job_id: str, current: JobStatus, to: JobStatus, *, fields: Mapping[str, Any],
               guard: Guard | None, at: datetime, kind: str, worker: str | None,
               detail: Mapping[str, Any] | None,
               output: Mapping[str, Any] | None = None) -> tuple[Select[Any], dict[str, Any]]:
    """The status change ``current -> to`` of ``job_id`` with its event (and, if final, NOTIFY and follower count).

    The statement and its parameters. One row back (the job's new row; with :data:`FOLLOWERS`
    when ``to`` is final), or none when nothing changed. ``output`` (a success): the ``outputs``
    row to upsert in the same statement, only if the job changed; the row comes back with
    :data:`OUTPUT_BEFORE`, the state the output had before (None: new).
    """
    # A column set to a SQL expression is part of the shape (the template holds the expression,
    # so its id is not reused while the template is kept).
    shape = tuple((name, id(v) if isinstance(v, ClauseElement) else None) for name, v in sorted(fields.items()))
    key = (current, to, shape, None if guard is None else id(guard.clause), output is not None)
    with _templates_lock:
        statement = _templates.get(key)
        if statement is None:
            statement = _build(current, to, fields, guard, with_output=output is not None)
            _templates[key] = statement
            if len(_templates) > TEMPLATES_KEPT:
                _templates.popitem(last=False)
        else:
            _templates.move_to_end(key)
    params: dict[str, Any] = {f"f_{name}": v for name, v in fields.items() if not isinstance(v, ClauseElement)}
    params.update(t_job_id=job_id, e_at=at, e_from_status=current.value, e_to_status=to.value, e_kind=kind,
                  e_worker=worker, e_detail=None if detail is None else dict(detail))
    if guard is not None:
        params.update(guard.params)
    if output is not None:
        params.update({f"o_{name}": output[name] for name in _OUTPUT_COLUMNS})
    return statement, params


def _build(current: JobStatus, to: JobStatus, fields: Mapping[str, Any], guard: Guard | None, *,
           with_output: bool) -> Select[Any]:
    values = {name: v if isinstance(v, ClauseElement) else bindparam(f"f_{name}", type_=jobs.c[name].type)
              for name, v in fields.items()}
    conditions = [jobs.c.id == bindparam("t_job_id"), jobs.c.status == current.value]
    if guard is not None:
        conditions.append(guard.clause)
    update_cte = update(jobs).where(*conditions).values(status=to.value, **values).returning(*jobs.c).cte("changed")
    changed = _CHANGED.c
    trail = insert(events).from_select(
        ["job_id", *_EVENT_COLUMNS],
        select(changed.id, *(bindparam(f"e_{name}", type_=events.c[name].type) for name in _EVENT_COLUMNS)),
    ).cte("trail")
    columns: list[Any] = list(changed)
    if to.terminal:
        followers = (
            select(func.count())
            .select_from(jobs)
            .where(jobs.c.cache_of_job_id == changed.id, jobs.c.status == JobStatus.QUEUED.value)
            .scalar_subquery()
        )
        payload = func.concat(changed.id, " ", to.value)  # (farm.ledger.queueing.done_payload)
        columns += [func.pg_notify(DONE_CHANNEL, payload).label("notified"), followers.label(FOLLOWERS)]
    ctes = [update_cte, trail]
    if with_output:
        before, written = _output_ctes()
        ctes += [before, written]
        columns.append(select(before.c.state).scalar_subquery().label(OUTPUT_BEFORE))
    return select(*columns).select_from(_CHANGED).add_cte(*ctes)


def _output_ctes() -> tuple[Any, Any]:
    """``before`` (the output's state before the statement) and ``written`` (its upsert, only for a changed job)."""
    return state_before(), upsert_from(_CHANGED).returning(outputs.c.uri).cte("written")
