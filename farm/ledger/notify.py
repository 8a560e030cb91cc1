"""Being told when jobs finish, instead of asking over and over.

On Postgres every transaction that moves jobs to a final status (succeeded, failed, cancelled)
announces their ids on the channel :data:`farm.ledger.queueing.DONE_CHANNEL` when it commits
(``pg_notify``: never for a rolled-back change). A :class:`DoneListener` holds one connection
``LISTEN``-ing on it; :meth:`DoneListener.wait` returns as soon as every job it waits for was
announced (or the timeout passed). On SQLite there is nothing to listen to: ``wait`` just sleeps,
and the caller polls.

Start listening *before* reading the jobs' statuses: an announcement that comes between the read
and the wait is then queued on the connection, not lost.
"""

from __future__ import annotations

import time
from typing import Any

from farm.ledger.queueing import DONE_CHANNEL

#: Seconds to wait for the listening connection.
CONNECT_TIMEOUT_S = 10


class DoneListener:
    """One listening connection (Postgres) or a sleeper (SQLite). Use as a context manager."""

    def __init__(self, libpq_url: str | None, *, sleep: Any = time.sleep) -> None:
        self._sleep = sleep
        self._conn: Any = None
        if libpq_url is not None:
            import psycopg

            self._conn = psycopg.connect(libpq_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            self._conn.execute(f"LISTEN {DONE_CHANNEL}")
        #: Announcements received (for the benchmark's and tests' counts).
        self.received = 0

    @property
    def live(self) -> bool:
        """True when announcements arrive (Postgres); False when the caller must poll."""
        return self._conn is not None

    def wait(self, pending: set[str], timeout_s: float) -> bool:
        """Wait until every id in ``pending`` was announced or ``timeout_s`` passed.

        Each announced id is removed from the set; True when the set became empty.
        """
        if not pending:
            return True
        if self._conn is None:
            self._sleep(max(0.0, timeout_s))
            return False
        deadline = time.monotonic() + max(0.0, timeout_s)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for note in self._conn.notifies(timeout=left):
                self.received += 1
                pending.discard(note.payload)
                if not pending:
                    return True
        return True

    def close(self) -> None:
        """Close the listening connection, if any."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> DoneListener:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
