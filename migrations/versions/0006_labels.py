"""Review labels on jobs (the seed library's tags).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 09:00:00

* ``jobs.labels``: a JSON list of review labels (lowercase ``[a-z0-9][a-z0-9._-]*``, sorted, no
  duplicates; see :mod:`farm.client.library`), never NULL; existing jobs get the empty list.
  Labels are set with ``Ledger.set_labels`` (event "labelled", before and after in its detail).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Add ``jobs.labels`` (every existing job: no labels)."""
    op.add_column("jobs", sa.Column("labels", _json(), nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    """Drop ``jobs.labels``."""
    op.drop_column("jobs", "labels")
