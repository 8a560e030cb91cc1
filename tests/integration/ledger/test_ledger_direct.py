"""The hot statements run on the driver connection (farm.ledger.direct) give what SQLAlchemy gives.

Same rows (types processed the same way in and out), same errors (a lost connection is
``LedgerUnavailable`` and the next call connects anew), and SQLAlchemy's own path whenever
execution events are listened to (tests that count statements, tracing).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from farm.errors import LedgerUnavailable
from farm.ledger import JobStatus, Ledger, direct, onestep
from farm.ledger import db as ledger_db

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def claim_statement(job_id: str) -> tuple[Any, dict[str, Any]]:
    return onestep.transition(
        job_id, JobStatus.QUEUED, JobStatus.RUNNING,
        fields={"attempts": onestep.ATTEMPT_TAKEN, "worker_host": "w1", "worker_device": "cuda:0",
                "lease_expires_at": NOW + timedelta(seconds=60), "heartbeat_at": NOW, "started_at": NOW,
                "finished_at": None, "progress": 0.0},
        guard=onestep.NOT_A_FOLLOWER, at=NOW, kind="claimed", worker="w1", detail={"device": "cuda:0"})


def test_a_row_comes_back_as_through_sqlalchemy(pg_url: str, make_job) -> None:
    with Ledger(pg_url) as ledger:
        through_sa, through_driver = ledger.add_jobs([make_job(seed=1), make_job(seed=2)])
        statement, params = claim_statement(through_sa)
        with ledger._autocommit.connect() as conn:
            expected = dict(conn.execute(statement, params).mappings().one())
        statement, params = claim_statement(through_driver)
        with ledger._autocommit.connect() as conn:
            got = direct.first(conn, statement, params)
        assert got is not None
        differ = {"id", "job_key", "seed", "params", "requested_params", "compat_key", "created_at", "enqueued_at"}
        assert {k: v for k, v in got.items() if k not in differ} == {
            k: v for k, v in expected.items() if k not in differ}
        assert set(got) == set(expected)
        assert got["started_at"] == NOW and got["started_at"].tzinfo is not None  # the UTC type, out
        assert got["lease_expires_at"] == NOW + timedelta(seconds=60)  # ... and in
        assert isinstance(got["params"], dict) and got["params"]["seed"] == 2  # JSON decoded
        assert ledger.get_job(through_driver).status is JobStatus.RUNNING  # committed (autocommit)
        assert [e.kind for e in ledger.events(through_driver)] == ["created", "claimed"]


def test_no_row_is_none_and_nothing_changes(pg_url: str, make_job) -> None:
    with Ledger(pg_url) as ledger:
        job_id = ledger.add_job(make_job(seed=3))
        statement, params = claim_statement(job_id)
        with ledger._autocommit.connect() as conn:
            assert direct.first(conn, statement, params) is not None
            assert direct.first(conn, statement, params) is None  # no longer queued: no row, no event
        assert [e.kind for e in ledger.events(job_id)] == ["created", "claimed"]


def test_the_hot_calls_run_on_the_driver_unless_events_listen(pg_url: str, make_job, monkeypatch) -> None:
    ran: list[str] = []
    real = direct._run

    def spy(conn: Any, statement: Any, params: Any, *, fetch: bool) -> Any:
        ran.append("driver")
        return real(conn, statement, params, fetch=fetch)

    monkeypatch.setattr(direct, "_run", spy)
    with Ledger(pg_url) as ledger:
        job_id = ledger.add_job(make_job(seed=4, no_cache=True))  # one no-cache job: its one statement
        assert ledger.claim(job_id, worker_host="w1", worker_device="cuda:0", lease_s=60) is not None
        assert ran == ["driver", "driver"]
        seen: list[str] = []
        listener = lambda *args: seen.append(" ".join(args[2].split()[:2]))  # noqa: E731
        event.listen(ledger._engine, "before_cursor_execute", listener)
        try:
            other = ledger.add_job(make_job(seed=5, no_cache=True))
            ledger.claim(other, worker_host="w1", worker_device="cuda:0", lease_s=60)
        finally:
            event.remove(ledger._engine, "before_cursor_execute", listener)
        assert ran == ["driver", "driver"]  # listened to: through SQLAlchemy, so the listener saw them
        assert seen == ["WITH locked", "WITH changed"]


def test_a_lost_connection_is_ledger_unavailable_and_the_next_call_reconnects(pg_url: str, make_job) -> None:
    with Ledger(pg_url) as ledger, psycopg.connect(ledger_db.libpq_url(pg_url), autocommit=True) as admin:
        first, second = ledger.add_jobs([make_job(seed=6), make_job(seed=7)])
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        with pytest.raises(LedgerUnavailable):
            ledger.claim(first, worker_host="w1", worker_device="cuda:0", lease_s=60)
        assert ledger.get_job(first).status is JobStatus.QUEUED  # nothing was written
        assert ledger.claim(second, worker_host="w1", worker_device="cuda:0", lease_s=60) is not None


def test_a_statement_error_is_sqlalchemys(pg_url: str, make_job) -> None:
    from sqlalchemy import exc as sa_exc

    with Ledger(pg_url) as ledger:
        job_id = ledger.add_job(make_job(seed=8))
        statement, params = claim_statement(job_id)
        params["e_kind"] = "x" * 10_000  # longer than the column allows
        with ledger._autocommit.connect() as conn, pytest.raises(sa_exc.DataError):
            direct.first(conn, statement, params)
        assert ledger.get_job(job_id).status is JobStatus.QUEUED  # the statement is atomic
