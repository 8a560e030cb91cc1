"""Opening a ledger.

The embedded SQLite ledger migrates itself, any other database must already be at head; SQLite runs
in WAL mode with foreign keys; connection failures are transient errors.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from farm.errors import LedgerUnavailable, SchemaOutOfDate, TransientError
from farm.ledger import Ledger
from farm.ledger import db as ledger_db
from farm.ledger.types import UTCDateTime
from farm.settings import EMBEDDED_LEDGER_FILENAME, Settings


def test_embedded_ledger_is_created_and_migrated_on_first_use(tmp_path: Path, make_job) -> None:
    data_dir = tmp_path / "fresh" / "machine"
    settings = Settings(data_dir=data_dir, database_url=None)
    assert settings.embedded
    with Ledger.from_settings(settings) as ledger:
        assert ledger.current_revision() == Ledger.head_revision()
        job_id = ledger.add_job(make_job())
    assert (data_dir / EMBEDDED_LEDGER_FILENAME).is_file()
    with Ledger.from_settings(settings) as ledger:  # second open: already at head, data kept
        assert ledger.get_job(job_id).id == job_id


def test_concurrent_first_use_of_an_embedded_ledger(tmp_path: Path) -> None:
    """Two processes starting on a fresh machine at once: both open it, one migration runs."""
    settings = Settings(data_dir=tmp_path / "shared", database_url=None)
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def open_it() -> None:
        barrier.wait()
        try:
            with Ledger.from_settings(settings) as ledger:
                assert ledger.list_jobs() == []
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Ledger.from_settings(settings) as ledger:
        assert ledger.current_revision() == Ledger.head_revision()


@pytest.mark.postgres
def test_server_ledger_must_be_migrated(pg_empty_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_empty_url)
    with pytest.raises(SchemaOutOfDate, match="farm db upgrade"):
        Ledger.from_settings(settings)
    with Ledger(pg_empty_url) as ledger:
        with pytest.raises(SchemaOutOfDate, match="farm db upgrade"):
            ledger.get_job("x")  # no tables at all
        ledger.upgrade()
    with Ledger.from_settings(settings) as ledger:
        assert ledger.list_jobs() == []


def test_non_embedded_sqlite_url_is_not_migrated_silently(sqlite_empty_url: str, tmp_path: Path) -> None:
    Path(sqlite_empty_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    settings = Settings(data_dir=tmp_path, database_url=sqlite_empty_url)
    with pytest.raises(SchemaOutOfDate, match="revision none"):
        Ledger.from_settings(settings)
    with Ledger(sqlite_empty_url) as ledger, pytest.raises(SchemaOutOfDate):
        ledger.list_jobs()


def test_unreachable_postgres_is_a_transient_ledger_error() -> None:
    with Ledger("postgresql://postgres@127.0.0.1:1/farm_nowhere") as ledger:
        with pytest.raises(LedgerUnavailable, match="unavailable") as caught:
            ledger.list_jobs()
        assert isinstance(caught.value, TransientError)
        with pytest.raises(LedgerUnavailable):
            ledger.current_revision()


def test_sqlite_engine_pragmas(sqlite_url: str) -> None:
    engine = ledger_db.make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == ledger_db.SQLITE_BUSY_TIMEOUT_MS
    finally:
        engine.dispose()


def test_postgres_urls_use_psycopg3() -> None:
    assert ledger_db.normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert ledger_db.normalize_url("sqlite:///x").drivername == "sqlite"


def test_utc_datetime_type_round_trips_aware_and_rejects_naive(ledger_url: str) -> None:
    """Aware datetimes in any zone come back as the same instant in UTC, on both backends."""
    column = UTCDateTime()
    with Ledger(ledger_url) as ledger:
        dialect = ledger._engine.dialect
    paris = datetime(2030, 6, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    stored = column.process_bind_param(paris, dialect)
    back = column.process_result_value(stored, dialect)
    assert back == paris and back is not None and back.tzinfo == UTC
    with pytest.raises(ValueError, match="naive"):
        column.process_bind_param(datetime(2030, 1, 1), dialect)


def test_stored_times_compare_as_instants(ledger, make_job, clock) -> None:
    """Leases set in one zone expire correctly when compared in UTC in SQL (the reaper's query)."""
    job_id = ledger.add_job(make_job())
    clock.now = clock.now.astimezone(timezone(timedelta(hours=-7)))
    ledger.claim(job_id, worker_host="w", worker_device="cpu", lease_s=60)
    assert ledger.requeue_expired(now=clock.now.astimezone(UTC) + timedelta(seconds=59)) == []
    assert ledger.requeue_expired(now=clock.now.astimezone(UTC) + timedelta(seconds=61)) == [job_id]


@pytest.mark.postgres
def test_a_pooled_connection_is_tested_only_after_sitting_idle(pg_url: str, make_job, monkeypatch) -> None:
    """A connection used a moment ago goes straight to work; one idle PING_IDLE_S is tested, a dead one replaced."""
    from sqlalchemy import event

    monkeypatch.setattr(ledger_db, "PING_IDLE_S", 0.3)
    with Ledger(pg_url) as ledger:
        job_id = ledger.add_job(make_job())
        seen: list[str] = []
        event.listen(ledger._engine, "before_cursor_execute",
                     lambda conn, cursor, statement, *args: seen.append(statement.split()[0]))
        ledger.get_job(job_id)
        ledger.get_job(job_id)
        assert seen == ["SELECT", "SELECT"]  # no ping: the connection was just used
        with ledger._read() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with Ledger(pg_url) as other, other._read() as conn:  # the server drops the pooled connection
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
        import time

        time.sleep(0.5)
        assert ledger.get_job(job_id).id == job_id  # tested, found dead, replaced: the call does not fail
        with ledger._read() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
