"""The Alembic migrations.

One linear history with one head; ``upgrade head`` on an empty database gives exactly the models'
schema (on Postgres and SQLite); ``downgrade base`` then ``upgrade head`` round-trips.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, String, Table, inspect, select, text
from sqlalchemy.engine import Engine

from farm.ledger import db
from farm.ledger.models import metadata
from farm.spec import compat_digest, parse_spec

FARM_TABLES = {"batches", "jobs", "events", "models", "workers", "outputs"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    url = request.getfixturevalue("sqlite_empty_url" if request.param == "sqlite" else "pg_empty_url")
    engine = db.make_engine(url)
    yield engine
    engine.dispose()


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def _diff(engine: Engine, target: MetaData) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, target))


def test_exactly_one_head_and_a_linear_history() -> None:
    script = ScriptDirectory.from_config(db.alembic_config())
    assert len(script.get_heads()) == 1
    assert len(script.get_bases()) == 1
    revisions = list(script.walk_revisions())
    assert [r.revision for r in revisions] == ["0006", "0005", "0004", "0003", "0002", "0001"]
    assert all(not r.is_merge_point for r in revisions)
    assert db.MIGRATIONS_DIR.is_dir() and (db.MIGRATIONS_DIR / "env.py").is_file()


def test_upgrade_head_on_an_empty_database_matches_the_models(empty_engine: Engine) -> None:
    assert db.current_revision(empty_engine) is None
    db.upgrade(empty_engine)
    assert db.current_revision(empty_engine) == db.head_revisions()[0]
    assert _tables(empty_engine) == FARM_TABLES | {"alembic_version"}
    assert _diff(empty_engine, metadata) == []
    assert db.schema_diff(empty_engine) == []


def test_the_comparison_can_fail(empty_engine: Engine) -> None:
    """Guard the guard: a model the migrations do not create shows up as a difference."""
    db.upgrade(empty_engine)
    changed = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["jobs"].append_column(Column("not_migrated", String(10), nullable=True))
    diff = _diff(empty_engine, changed)
    assert [(d[0], d[3].name) for d in diff if isinstance(d, tuple)] == [("add_column", "not_migrated")]


def test_downgrade_base_then_upgrade_head_round_trips(empty_engine: Engine) -> None:
    db.upgrade(empty_engine)
    db.downgrade(empty_engine, "base")
    assert db.current_revision(empty_engine) is None
    assert _tables(empty_engine) - {"alembic_version"} == set()
    db.upgrade(empty_engine)
    assert _tables(empty_engine) >= FARM_TABLES
    assert _diff(empty_engine, metadata) == []


def test_constraints_and_indexes_exist_in_the_migrated_schema(empty_engine: Engine) -> None:
    db.upgrade(empty_engine)
    insp = inspect(empty_engine)
    job_indexes = {ix["name"]: tuple(ix["column_names"]) for ix in insp.get_indexes("jobs")}
    assert job_indexes["ix_jobs_status_priority_created_at"] == ("status", "priority", "created_at")
    assert job_indexes["ix_jobs_job_key_status"] == ("job_key", "status")
    assert job_indexes["ix_jobs_batch_id"] == ("batch_id",)
    assert job_indexes["ix_jobs_status_compat_key"] == ("status", "compat_key")
    assert job_indexes["ix_jobs_cache_of_job_id"] == ("cache_of_job_id",)
    columns = {c["name"]: c for c in insp.get_columns("jobs")}
    assert not columns["compat_key"]["nullable"] and not columns["no_cache"]["nullable"]
    assert columns["batch_index"]["nullable"] and columns["enqueued_at"]["nullable"]
    assert {"ck_workers_state", "ck_workers_counters_non_negative"} <= {
        c["name"] for c in insp.get_check_constraints("workers")}
    assert insp.get_pk_constraint("workers")["constrained_columns"] == ["name"]
    assert insp.get_pk_constraint("models")["constrained_columns"] == ["name"]
    assert not any(ix["unique"] for ix in insp.get_indexes("jobs") if ix["column_names"] == ["job_key"])
    uniques = [tuple(u["column_names"]) for u in insp.get_unique_constraints("batches")]
    assert uniques == [("manifest_digest",)]
    checks = {c["name"] for c in insp.get_check_constraints("jobs")}
    assert {"ck_jobs_status", "ck_jobs_priority", "ck_jobs_progress_range"} <= checks
    foreign = {(tuple(f["constrained_columns"]), f["referred_table"]) for f in insp.get_foreign_keys("jobs")}
    assert foreign == {
        (("batch_id",), "batches"), (("parent_job_id",), "jobs"), (("cache_of_job_id",), "jobs"),
    }


def test_offline_sql_can_be_generated() -> None:
    """``alembic upgrade head --sql`` renders for Postgres (reviewable DDL for production)."""
    import io

    from alembic import command

    out = io.StringIO()
    cfg = db.alembic_config(url="postgresql+psycopg://u@localhost/x")
    cfg.output_buffer = out
    command.upgrade(cfg, "head", sql=True)
    sql = out.getvalue()
    assert "CREATE TABLE jobs" in sql and "JSONB" in sql and "TIMESTAMP WITH TIME ZONE" in sql


def _insert_0001_job(engine: Engine, job_id: str, seed: int) -> dict[str, object]:
    """A job (and its "created" event) written the way revision 0001's schema holds it."""
    canon = parse_spec({"prompt": "an old job", "seed": seed, "steps": 4}).canonical()
    reflected = MetaData()
    jobs = Table("jobs", reflected, autoload_with=engine)
    events = Table("events", reflected, autoload_with=engine)
    at = datetime(2025, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(jobs.insert().values(
            id=job_id, job_key=f"{seed:064d}", status="queued", prompt="an old job", seed=seed,
            seed_strategy="explicit", params=canon, requested_params={}, model_name=canon["model"],
            priority="batch", attempts=0, max_attempts=3, created_at=at, tags={}, starred=False, progress=0.0,
        ))
        conn.execute(events.insert().values(job_id=job_id, at=at, to_status="queued", kind="created"))
    return canon


def test_upgrade_from_0001_keeps_jobs_and_fills_compat_keys(empty_engine: Engine) -> None:
    db.upgrade(empty_engine, "0001")
    canons = {f"job-{i}": _insert_0001_job(empty_engine, f"job-{i}", seed=i) for i in range(3)}
    db.upgrade(empty_engine, "0002")
    assert db.current_revision(empty_engine) == "0002"
    jobs = Table("jobs", MetaData(), autoload_with=empty_engine)
    with empty_engine.connect() as conn:
        rows = conn.execute(select(jobs.c.id, jobs.c.compat_key, jobs.c.no_cache, jobs.c.batch_index,
                                   jobs.c.enqueued_at)).all()
    assert {r.id: r.compat_key for r in rows} == {job_id: compat_digest(c) for job_id, c in canons.items()}
    assert all(not r.no_cache and r.batch_index is None and r.enqueued_at is None for r in rows)
    db.upgrade(empty_engine)
    assert _diff(empty_engine, metadata) == []

    db.downgrade(empty_engine, "0001")
    assert db.current_revision(empty_engine) == "0001"
    assert _tables(empty_engine) == {"batches", "jobs", "events", "alembic_version"}
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 3
        assert conn.execute(text("SELECT count(*) FROM events")).scalar_one() == 3
    assert "compat_key" not in {c["name"] for c in inspect(empty_engine).get_columns("jobs")}
    db.upgrade(empty_engine)
    assert _diff(empty_engine, metadata) == []


def test_upgrade_to_0003_records_the_outputs_of_succeeded_jobs(empty_engine: Engine) -> None:
    """Each distinct output URI of a succeeded job becomes one ``ok`` row.

    It has the latest job's file hash, verified when that job finished, size unknown. Failed jobs
    and jobs without output add nothing; downgrading drops the table and keeps the jobs.
    """
    db.upgrade(empty_engine, "0001")
    for i in range(4):
        _insert_0001_job(empty_engine, f"job-{i}", seed=i)
    db.upgrade(empty_engine, "0002")
    jobs = Table("jobs", MetaData(), autoload_with=empty_engine)
    t0 = datetime(2025, 3, 1, tzinfo=UTC)
    finished = {"job-0": (t0, "a" * 64, "succeeded", "file:///o/aa/1/video.mp4"),
                "job-1": (t0.replace(day=2), "b" * 64, "succeeded", "file:///o/aa/1/video.mp4"),
                "job-2": (t0.replace(day=3), "c" * 64, "succeeded", "file:///o/cc/2/video.mp4"),
                "job-3": (t0.replace(day=4), "d" * 64, "failed", "file:///o/dd/3/video.mp4")}
    with empty_engine.begin() as conn:
        for job_id, (at, sha, status, uri) in finished.items():
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                status=status, finished_at=at, file_sha256=sha, output_uri=uri))
    db.upgrade(empty_engine, "0003")
    assert db.current_revision(empty_engine) == "0003"
    outputs = Table("outputs", MetaData(), autoload_with=empty_engine)
    with empty_engine.connect() as conn:
        rows = {r.uri: r for r in conn.execute(select(outputs))}
    assert set(rows) == {"file:///o/aa/1/video.mp4", "file:///o/cc/2/video.mp4"}
    first = rows["file:///o/aa/1/video.mp4"]
    assert (first.file_sha256, first.state, first.size_bytes) == ("b" * 64, "ok", None)
    assert first.verified_at.replace(tzinfo=UTC) == t0.replace(day=2)
    assert rows["file:///o/cc/2/video.mp4"].file_sha256 == "c" * 64
    db.upgrade(empty_engine)
    assert _diff(empty_engine, metadata) == []
    db.downgrade(empty_engine, "0002")
    assert "outputs" not in _tables(empty_engine)
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 4


def test_upgrade_to_0004_counts_existing_batches_as_sent(empty_engine: Engine) -> None:
    """Batches recorded before 0004 were marked job by job.

    They count as sent through their last job (the jobs' own ``enqueued_at`` still says which
    were never sent); new ones start at -1.
    """
    db.upgrade(empty_engine, "0003")
    batches = Table("batches", MetaData(), autoload_with=empty_engine)
    at = datetime(2025, 5, 1, tzinfo=UTC)
    with empty_engine.begin() as conn:
        conn.execute(batches.insert().values(id="b1", manifest_digest="d" * 64, name="old", source_name="old.yaml",
                                             created_at=at, job_count=7))
    db.upgrade(empty_engine, "0004")
    assert db.current_revision(empty_engine) == "0004"
    batches = Table("batches", MetaData(), autoload_with=empty_engine)
    with empty_engine.begin() as conn:
        assert conn.execute(select(batches.c.sent_through)).scalar_one() == 6
        conn.execute(batches.insert().values(id="b2", manifest_digest="e" * 64, name="new", source_name="n.yaml",
                                             created_at=at, job_count=3))
        assert conn.execute(select(batches.c.sent_through).where(batches.c.id == "b2")).scalar_one() == -1
    db.upgrade(empty_engine)
    assert _diff(empty_engine, metadata) == []
    db.downgrade(empty_engine, "0003")
    assert "sent_through" not in {c["name"] for c in inspect(empty_engine).get_columns("batches")}


def test_upgrade_to_0005_adds_routing_and_degradation_columns(empty_engine: Engine) -> None:
    """Existing workers serve every model (models NULL); existing jobs render as asked (allow_degrade false)."""
    db.upgrade(empty_engine, "0004")
    workers = Table("workers", MetaData(), autoload_with=empty_engine)
    at = datetime(2025, 5, 1, tzinfo=UTC)
    with empty_engine.begin() as conn:
        conn.execute(workers.insert().values(name="old@h", host="h", device="cuda:0", pid=1, state="idle",
                                             started_at=at, last_seen_at=at))
    db.upgrade(empty_engine, "0005")
    assert db.current_revision(empty_engine) == "0005"
    workers = Table("workers", MetaData(), autoload_with=empty_engine)
    with empty_engine.begin() as conn:
        row = conn.execute(select(workers.c.models, workers.c.tags)).one()
    assert (row.models, row.tags) == (None, None)
    jobs_columns = {c["name"] for c in inspect(empty_engine).get_columns("jobs")}
    assert {"allow_degrade", "degraded_reason"} <= jobs_columns
    db.downgrade(empty_engine, "0004")
    assert not {"allow_degrade", "degraded_reason"} & {c["name"] for c in inspect(empty_engine).get_columns("jobs")}
    assert "models" not in {c["name"] for c in inspect(empty_engine).get_columns("workers")}


def test_upgrade_to_0006_gives_existing_jobs_no_labels(empty_engine: Engine) -> None:
    """``jobs.labels``: a JSON list, never NULL; jobs recorded before it have none."""
    db.upgrade(empty_engine, "0001")
    _insert_0001_job(empty_engine, "old-job", seed=3)
    db.upgrade(empty_engine, "0005")
    assert "labels" not in {c["name"] for c in inspect(empty_engine).get_columns("jobs")}
    db.upgrade(empty_engine)
    assert db.current_revision(empty_engine) == "0006"
    assert _diff(empty_engine, metadata) == []
    jobs = Table("jobs", MetaData(), autoload_with=empty_engine)
    with empty_engine.begin() as conn:
        assert conn.execute(select(jobs.c.labels).where(jobs.c.id == "old-job")).scalar_one() == []
    assert not {c["name"]: c for c in inspect(empty_engine).get_columns("jobs")}["labels"]["nullable"]
    db.downgrade(empty_engine, "0005")
    assert "labels" not in {c["name"] for c in inspect(empty_engine).get_columns("jobs")}
