"""The ledger's ``outputs`` queries.

Recording a written file, marking what a check found, and the join that keeps cache hits to
outputs in state ``ok``.

Plain functions over a :class:`~sqlalchemy.engine.Connection` inside the caller's transaction;
only :class:`farm.ledger.manager.Ledger` calls them. A change of an output's state appends one
event (``output-ok``, ``output-missing``, ``output-corrupt``) to every succeeded job that points at
it, so each job's trail says when its file went bad and when it was restored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from farm.ledger.models import events, jobs, outputs
from farm.ledger.queueing import PG_DEDUP_LOCK_KEY, chunks, upsert
from farm.ledger.records import OutputMark, OutputRecord
from farm.ledger.status import OUTPUT_STATES, JobStatus

#: Decides whether the cache may answer from an output (a producer's quick look at the file).
OutputFilter = Callable[[OutputRecord], bool]
#: Event kinds of output state changes: ``output-<state>``.
EVENT_PREFIX = "output-"
OK = "ok"


def record_written(conn: Connection, *, uri: str, file_sha256: str, frames_sha256: str | None,
                   size_bytes: int | None, now: datetime) -> None:
    """A writer stored (or found intact) this file: state ``ok``, verified now.

    An output that was missing or corrupt is thereby restored (an ``output-ok`` event on the jobs
    pointing at it). The shared dedup lock is taken first (see
    :func:`farm.ledger.queueing.lock_dedup`), in the same statement on Postgres
    (:data:`_WRITTEN_LOCKED_PG`).
    """
    values = {
        "uri": uri, "file_sha256": file_sha256, "frames_sha256": frames_sha256, "size_bytes": size_bytes,
        "state": OK, "verified_at": now, "checked_at": now, "detail": None,
    }
    if conn.dialect.name == "postgresql":
        params: dict[str, Any] = {f"o_{k}": v for k, v in values.items()}
        params["lock_key"] = PG_DEDUP_LOCK_KEY
        before_state = conn.execute(_WRITTEN_LOCKED_PG, params).scalar_one()
    else:  # (SQLite's write transaction is the dedup lock)
        before = get(conn, uri)
        before_state = None if before is None else before.state
        upsert(conn, outputs, values, "uri", {k: v for k, v in values.items() if k != "uri"})
    if before_state is not None and before_state != OK:
        _events(conn, OutputMark(uri, OK, file_sha256, "written again by a render"), before_state, now)


def state_before() -> Any:
    """A CTE ``before``: the state of the output ``:o_uri`` before the statement (no row: none yet)."""
    return select(outputs.c.state).where(outputs.c.uri == bindparam("o_uri")).cte("before")


def upsert_from(source: Any) -> Any:
    """``INSERT`` the output row given as ``o_<column>`` parameters, once per row of ``source``, or update it.

    ``ON CONFLICT (uri) DO UPDATE`` every other column. ``source``: a CTE or table the row is
    selected from (the statement writes nothing when it has no row). Postgres only.
    """
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    row = select(*(bindparam(f"o_{c.name}", type_=c.type) for c in outputs.c)).select_from(source)
    statement = pg_insert(outputs).from_select([c.name for c in outputs.c], row)
    return statement.on_conflict_do_update(
        index_elements=[outputs.c.uri],
        set_={c.name: statement.excluded[c.name] for c in outputs.c if c.name != "uri"},
    )


def _written_locked_pg() -> Any:
    """The upsert of :func:`record_written` returning the state the row had before (NULL: new).

    Its row is selected from a CTE that takes the shared dedup lock, so the lock is held from
    this statement on (a later statement's snapshot sees every follower a producer committed
    under the exclusive lock).
    """
    locked = select(func.pg_advisory_xact_lock_shared(bindparam("lock_key")).label("locked")).cte("locked")
    before = state_before()
    return upsert_from(locked).returning(select(before.c.state).scalar_subquery().label("before_state")).add_cte(before)


#: Built once (see :func:`record_written`).
_WRITTEN_LOCKED_PG = _written_locked_pg()


def get(conn: Connection, uri: str) -> OutputRecord | None:
    """The ``outputs`` row of ``uri``, or None."""
    row = conn.execute(select(outputs).where(outputs.c.uri == uri)).mappings().first()
    return None if row is None else OutputRecord.from_row(row)


def by_uri(conn: Connection, uris: Iterable[str]) -> dict[str, OutputRecord]:
    """The ``outputs`` rows of ``uris`` that exist, by URI."""
    found: dict[str, OutputRecord] = {}
    for part in chunks(sorted(set(uris))):
        for row in conn.execute(select(outputs).where(outputs.c.uri.in_(part))).mappings():
            found[row["uri"]] = OutputRecord.from_row(row)
    return found


def mark(conn: Connection, marks: Sequence[OutputMark], now: datetime) -> list[str]:
    """Record what checks found; the URIs whose state changed.

    Each change is an event on every succeeded job that points at the output. A URI without a
    row gets one (an output recorded before the table existed).
    """
    for m in marks:
        if m.state not in OUTPUT_STATES:
            raise ValueError(f"output state must be one of {OUTPUT_STATES}, got {m.state!r}")
    current = by_uri(conn, (m.uri for m in marks))
    changed: list[str] = []
    for m in marks:
        before = current.get(m.uri)
        values: dict[str, Any] = {"state": m.state, "checked_at": now}
        if m.state == OK:
            values.update(verified_at=now, detail=None)
            if m.size_bytes is not None:
                values["size_bytes"] = m.size_bytes
        else:
            values["detail"] = {"reason": m.detail, "actual_sha256": m.actual_sha256, "size_bytes": m.size_bytes}
        if before is None:
            row = {"uri": m.uri, "file_sha256": m.expected_sha256, "frames_sha256": None, "size_bytes": None,
                   "verified_at": None, "detail": None, **values}
            conn.execute(insert(outputs).values(**row))
        else:
            conn.execute(update(outputs).where(outputs.c.uri == m.uri).values(**values))
        if before is None or before.state != m.state:
            changed.append(m.uri)
            _events(conn, m, before.state if before else None, now)
    return changed


def restored(conn: Connection, uri: str, file_sha256: str, before: str, now: datetime, *, besides: str) -> None:
    """A render wrote the ``missing`` or ``corrupt`` output ``uri`` again: an ``output-ok`` event on its other jobs.

    (:func:`record_written` does it in its own transaction; Postgres' one-statement success,
    whose job ``besides`` already points at the output, right after.)
    """
    _events(conn, OutputMark(uri, OK, file_sha256, "written again by a render"), before, now, besides=besides)


def _events(conn: Connection, m: OutputMark, before: str | None, now: datetime, *, besides: str | None = None) -> None:
    query = select(jobs.c.id).where(jobs.c.output_uri == m.uri, jobs.c.status == JobStatus.SUCCEEDED.value)
    if besides is not None:
        query = query.where(jobs.c.id != besides)
    ids = conn.execute(query).scalars().all()
    if not ids:
        return
    detail = {"uri": m.uri, "from_state": before, "reason": m.detail}
    succeeded = JobStatus.SUCCEEDED.value
    conn.execute(insert(events), [
        {"job_id": job_id, "at": now, "from_status": succeeded, "to_status": succeeded,
         "kind": f"{EVENT_PREFIX}{m.state}", "worker": None, "detail": detail}
        for job_id in ids
    ])


def answerable(rows: Mapping[str, OutputRecord], output_ok: OutputFilter | None) -> set[str]:
    """The URIs among ``rows`` (state ``ok``) the cache may answer from.

    All of them, or those ``output_ok`` vouches for.
    """
    return {uri for uri, rec in rows.items() if rec.ok and (output_ok is None or output_ok(rec))}
