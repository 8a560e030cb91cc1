"""outputs: one row per stored output file, with its integrity state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 00:00:00

A frozen snapshot (the states are spelled out here). Existing outputs are recorded from the
succeeded jobs that point at them: state ``ok``, the file hash of the most recently finished job,
``size_bytes`` unknown and ``verified_at`` the time that job finished. An unknown size makes the
next quick check defer to a full hash, so nothing is answered from an unverified old file.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OUTPUT_STATES = "'ok', 'missing', 'corrupt'"
#: Rows inserted per statement while recording existing outputs.
BACKFILL_CHUNK = 1000


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _backfill(outputs: sa.Table) -> None:
    conn = op.get_bind()
    jobs = sa.table("jobs", sa.column("output_uri", sa.Text()), sa.column("file_sha256", sa.String()),
                    sa.column("frames_sha256", sa.String()), sa.column("finished_at", sa.DateTime(timezone=True)),
                    sa.column("status", sa.String()))
    query = (
        sa.select(jobs.c.output_uri, jobs.c.file_sha256, jobs.c.frames_sha256, jobs.c.finished_at)
        .where(jobs.c.status == "succeeded", jobs.c.output_uri.is_not(None), jobs.c.file_sha256.is_not(None))
        .order_by(jobs.c.finished_at)
    )
    now = datetime.now(UTC)
    latest: dict[str, dict[str, object]] = {}
    for uri, file_sha256, frames_sha256, finished_at in conn.execute(query):
        if finished_at is not None and finished_at.tzinfo is None:
            finished_at = finished_at.replace(tzinfo=UTC)
        latest[uri] = {"uri": uri, "file_sha256": file_sha256, "frames_sha256": frames_sha256, "size_bytes": None,
                       "state": "ok", "verified_at": finished_at, "checked_at": now, "detail": None}
    rows = list(latest.values())
    for start in range(0, len(rows), BACKFILL_CHUNK):
        conn.execute(sa.insert(outputs), rows[start : start + BACKFILL_CHUNK])


def upgrade() -> None:
    """Create the outputs table; online, record the outputs of the existing succeeded jobs."""
    outputs = op.create_table(
        "outputs",
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("frames_sha256", sa.String(64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", _json(), nullable=True),
        sa.CheckConstraint(f"state IN ({OUTPUT_STATES})", name=op.f("ck_outputs_state")),
        sa.CheckConstraint("size_bytes IS NULL OR size_bytes >= 0", name=op.f("ck_outputs_size_non_negative")),
        sa.PrimaryKeyConstraint("uri", name=op.f("pk_outputs")),
    )
    if not context.is_offline_mode():
        _backfill(outputs)


def downgrade() -> None:
    """Drop the outputs table."""
    op.drop_table("outputs")
