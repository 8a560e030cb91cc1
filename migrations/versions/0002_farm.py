"""farm: jobs.batch_index/compat_key/enqueued_at/no_cache; tables models and workers.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02 00:00:00

A frozen snapshot like 0001 (the worker states are spelled out here). Existing jobs get their
``compat_key`` computed from their stored canonical params (``farm.spec.compat_digest``, the
function the code that writes new jobs uses).

SQLite cannot recreate ``jobs`` inside a transaction while ``events`` references it (foreign keys
are on), so every change to ``jobs`` is a plain ``ADD COLUMN`` / ``DROP COLUMN``: on SQLite
``compat_key`` is added NOT NULL with an empty default and then filled; on Postgres it is added
nullable, filled, then made NOT NULL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WORKER_STATES = "'starting', 'idle', 'busy', 'circuit_open', 'stopped'"
#: Rows updated per statement while filling compat_key.
BACKFILL_CHUNK = 1000


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _backfill_compat_keys() -> None:
    from farm.spec import compat_digest

    conn = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.String()), sa.column("params", _json()),
                    sa.column("compat_key", sa.String()))
    rows = conn.execute(sa.select(jobs.c.id, jobs.c.params)).all()
    update = (
        sa.update(jobs).where(jobs.c.id == sa.bindparam("job_id")).values(compat_key=sa.bindparam("key"))
    )
    for start in range(0, len(rows), BACKFILL_CHUNK):
        chunk = rows[start : start + BACKFILL_CHUNK]
        conn.execute(update, [{"job_id": r.id, "key": compat_digest(r.params or {})} for r in chunk])


def upgrade() -> None:
    """Add the four jobs columns (compat_key backfilled online) and their indexes; create models and workers."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.add_column("jobs", sa.Column("batch_index", sa.Integer(), nullable=True))
    if sqlite:
        op.add_column("jobs", sa.Column("compat_key", sa.String(32), server_default="", nullable=False))
    else:
        op.add_column("jobs", sa.Column("compat_key", sa.String(32), nullable=True))
    op.add_column("jobs", sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "jobs",
        sa.Column("no_cache", sa.Boolean(create_constraint=False), server_default=sa.false(), nullable=False),
    )
    if not context.is_offline_mode():
        # Offline SQL cannot compute digests: run it only on a ledger without jobs.
        _backfill_compat_keys()
    if not sqlite:
        op.alter_column("jobs", "compat_key", existing_type=sa.String(32), nullable=False)
    op.create_index(op.f("ix_jobs_status_compat_key"), "jobs", ["status", "compat_key"])
    op.create_index(op.f("ix_jobs_cache_of_job_id"), "jobs", ["cache_of_job_id"])

    op.create_table(
        "models",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("weights_fingerprint", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_models")),
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("jobs_succeeded", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("jobs_failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", _json(), nullable=True),
        sa.CheckConstraint(f"state IN ({WORKER_STATES})", name=op.f("ck_workers_state")),
        sa.CheckConstraint(
            "consecutive_failures >= 0 AND jobs_succeeded >= 0 AND jobs_failed >= 0",
            name=op.f("ck_workers_counters_non_negative"),
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workers")),
    )


def downgrade() -> None:
    """Drop the tables workers and models, the two jobs indexes and the four jobs columns."""
    op.drop_table("workers")
    op.drop_table("models")
    op.drop_index(op.f("ix_jobs_cache_of_job_id"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_status_compat_key"), table_name="jobs")
    op.drop_column("jobs", "no_cache")
    op.drop_column("jobs", "enqueued_at")
    op.drop_column("jobs", "compat_key")
    op.drop_column("jobs", "batch_index")
