"""Watching what a :class:`farm.ledger.Ledger` runs (shared by the ledger and producer suites)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from farm.ledger import Ledger


@contextmanager
def statements(ledger: Ledger) -> Iterator[list[str]]:
    """The SQL statements the ledger's engine runs while the block runs (their first two words).

    Listening makes the ledger run its hot statements through SQLAlchemy, where they are seen
    (see :mod:`farm.ledger.direct`).
    """
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()[:2]))

    event.listen(ledger._engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(ledger._engine, "before_cursor_execute", before)
