"""batches.sent_through: how far a batch's messages are confirmed sent.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 00:00:01

A batch's jobs are recorded as sent when they are added, and their messages go out in
``batch_index`` order; ``sent_through`` is the highest ``batch_index`` whose message (and every
earlier one) the producer saw published. A producer that dies while sending leaves it short: the
same manifest submitted again, or the reaper after a grace period, sends the rest. Existing
batches were marked job by job: they count as sent through their last job.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add batches.sent_through; existing batches count as sent through their last job."""
    op.add_column("batches", sa.Column("sent_through", sa.Integer(), server_default=sa.text("-1"), nullable=False))
    op.execute("UPDATE batches SET sent_through = job_count - 1")


def downgrade() -> None:
    """Drop batches.sent_through."""
    op.drop_column("batches", "sent_through")
