"""initial ledger: batches, jobs, events.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

A frozen snapshot: the status and priority lists are spelled out here, not imported, so later
changes to the code cannot silently change what this migration creates.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "'queued', 'running', 'succeeded', 'failed', 'cancelled'"
PRIORITIES = "'interactive', 'batch'"


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Create the tables batches, jobs and events, and the jobs' and events' indexes."""
    op.create_table(
        "batches",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("manifest_digest", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("source_name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_count", sa.Integer(), nullable=False),
        sa.CheckConstraint("job_count >= 0", name=op.f("ck_batches_job_count_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.UniqueConstraint("manifest_digest", name=op.f("uq_batches_manifest_digest")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("job_key", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(36), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative_prompt", sa.Text(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("seed_strategy", sa.String(16), nullable=False),
        sa.Column("params", _json(), nullable=False),
        sa.Column("requested_params", _json(), nullable=False),
        sa.Column("effective_params", _json(), nullable=True),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("weights_fingerprint", sa.String(128), nullable=True),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("worker_host", sa.String(255), nullable=True),
        sa.Column("worker_device", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("timings", _json(), nullable=True),
        sa.Column("output_uri", sa.Text(), nullable=True),
        sa.Column("file_sha256", sa.String(64), nullable=True),
        sa.Column("frames_sha256", sa.String(64), nullable=True),
        sa.Column("env_fingerprint", _json(), nullable=True),
        sa.Column("error_type", sa.String(128), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("parent_job_id", sa.String(36), nullable=True),
        sa.Column("cache_of_job_id", sa.String(36), nullable=True),
        sa.Column("tags", _json(), nullable=False),
        sa.Column("starred", sa.Boolean(create_constraint=False), server_default=sa.false(), nullable=False),
        sa.Column("progress", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_jobs_status")),
        sa.CheckConstraint(f"priority IN ({PRIORITIES})", name=op.f("ck_jobs_priority")),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name=op.f("ck_jobs_progress_range")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_jobs_attempts_non_negative")),
        sa.CheckConstraint("max_attempts >= 1", name=op.f("ck_jobs_max_attempts_positive")),
        sa.CheckConstraint("seed >= 0", name=op.f("ck_jobs_seed_non_negative")),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_jobs_batch_id_batches")),
        sa.ForeignKeyConstraint(["parent_job_id"], ["jobs.id"], name=op.f("fk_jobs_parent_job_id_jobs")),
        sa.ForeignKeyConstraint(["cache_of_job_id"], ["jobs.id"], name=op.f("fk_jobs_cache_of_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_job_key"), "jobs", ["job_key"])
    op.create_index(op.f("ix_jobs_batch_id"), "jobs", ["batch_id"])
    op.create_index(op.f("ix_jobs_status_priority_created_at"), "jobs", ["status", "priority", "created_at"])
    op.create_index(op.f("ix_jobs_job_key_status"), "jobs", ["job_key", "status"])
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("detail", _json(), nullable=True),
        sa.CheckConstraint(f"to_status IN ({STATUSES})", name=op.f("ck_events_to_status")),
        sa.CheckConstraint(
            f"from_status IS NULL OR from_status IN ({STATUSES})", name=op.f("ck_events_from_status")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_events_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_job_id"), "events", ["job_id"])


def downgrade() -> None:
    """Drop the indexes and the tables events, jobs and batches."""
    op.drop_index(op.f("ix_events_job_id"), table_name="events")
    op.drop_table("events")
    op.drop_index(op.f("ix_jobs_job_key_status"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_status_priority_created_at"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_batch_id"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_job_key"), table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("batches")
