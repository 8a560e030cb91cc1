"""Capability routing and degradation under load.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 08:30:00

* ``workers.models`` / ``workers.tags`` (JSON lists): what a worker declared it can render (models
  whose weights it verified at start) and its free-form tags (``h200``, ``4090``); the producer's
  status view says why a job whose model no live worker serves stays queued.
* ``jobs.allow_degrade``: the job may render at its profile's degraded settings when the farm is
  under load; ``jobs.degraded_reason``: why it did (NULL: rendered as asked). Degraded outputs never
  answer another job from the cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Add the routing columns to workers and the degradation columns to jobs."""
    op.add_column("workers", sa.Column("models", _json(), nullable=True))
    op.add_column("workers", sa.Column("tags", _json(), nullable=True))
    op.add_column("jobs", sa.Column("allow_degrade", sa.Boolean(create_constraint=False), nullable=False,
                                    server_default=sa.false()))
    op.add_column("jobs", sa.Column("degraded_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop the routing and degradation columns."""
    op.drop_column("jobs", "degraded_reason")
    op.drop_column("jobs", "allow_degrade")
    op.drop_column("workers", "tags")
    op.drop_column("workers", "models")
