"""Column types that behave the same on SQLite and Postgres.

* :class:`UTCDateTime` — timezone-aware UTC datetimes in and out on both backends. Postgres keeps
  them as ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC text
  (which also sorts and compares correctly) and come back with ``tzinfo=UTC`` attached.
* :func:`json_doc` — JSON on SQLite, ``jsonb`` on Postgres (comparable, indexable).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that only accepts aware datetimes and always returns UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """The value to store: in UTC (naive on SQLite); a naive datetime or a non-datetime is refused."""
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the ledger stores timezone-aware UTC times only")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """The stored value as an aware UTC datetime (SQLite gives naive UTC ones back)."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def json_doc() -> TypeEngine[Any]:
    """JSON, stored as ``jsonb`` on Postgres."""
    return JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the ledger's default clock)."""
    return datetime.now(UTC)
