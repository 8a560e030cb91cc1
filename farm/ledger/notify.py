"""Being told when jobs finish, instead of asking over and over.

On Postgres every transaction that moves jobs to a final status (succeeded, failed, cancelled)
announces each job and its final status (``"<job id> <status>"``,
:func:`farm.ledger.queueing.done_payload`) on the channel :data:`farm.ledger.queueing.DONE_CHANNEL`
when it commits (``pg_notify``: never for a rolled-back change). A :class:`DoneListener` holds one
connection ``LISTEN``-ing on it while a wait runs; :meth:`DoneListener.wait` returns as soon as
every job it waits for was announced (or the timeout passed), and :attr:`DoneListener.final` says
with which status. On SQLite there is nothing to listen to: ``wait`` just sleeps, and the caller
polls.

Start listening *before* reading the jobs' statuses: an announcement that comes between the read
and the wait is then queued on the connection, not lost.
"""

from __future__ import annotations

import time
from typing import Any

from farm.errors import LedgerUnavailable
from farm.ledger.queueing import DONE_CHANNEL, parse_done
from farm.ledger.status import JobStatus

#: Seconds to wait for the listening connection.
CONNECT_TIMEOUT_S = 10


class DoneListener:
    """One listening connection (Postgres) or a sleeper (SQLite).

    The connection is opened once and kept: :meth:`start` (``LISTEN``) and :meth:`stop`
    (``UNLISTEN``, announcements already delivered dropped) bracket each wait, so that a client
    waiting on job after job pays two short round trips per wait, not a new connection. Between
    waits the connection listens to nothing (the server queues no announcements for it).
    Use :meth:`farm.ledger.reads.LedgerReads.listen`, which hands one out and takes it back.
    """

    def __init__(self, libpq_url: str | None, *, sleep: Any = time.sleep) -> None:
        self._sleep = sleep
        self._url = libpq_url
        self._conn: Any = None
        #: Announcements received (for the benchmark's and tests' counts).
        self.received = 0
        #: The final status announced for each job :meth:`wait` waited for, since :meth:`start`.
        self.final: dict[str, JobStatus] = {}

    def start(self) -> None:
        """Begin listening (connects on first use)."""
        self.final = {}
        if self._url is None:
            return
        import psycopg

        try:
            if self._conn is None:
                self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            self._conn.execute(f"LISTEN {DONE_CHANNEL}")
        except psycopg.OperationalError as exc:
            raise LedgerUnavailable(f"cannot listen for finished jobs: {exc}") from exc

    def stop(self) -> None:
        """Stop listening and drop what was announced meanwhile (the connection stays open)."""
        if self._conn is None:
            return
        import psycopg

        try:
            self._conn.execute(f"UNLISTEN {DONE_CHANNEL}")
            for _ in self._conn.notifies(timeout=0):
                pass
        except psycopg.OperationalError as exc:
            raise LedgerUnavailable(f"cannot stop listening: {exc}") from exc

    @property
    def live(self) -> bool:
        """True when announcements arrive (Postgres); False when the caller must poll."""
        return self._url is not None

    def wait(self, pending: set[str], timeout_s: float) -> bool:
        """Wait until every id in ``pending`` was announced or ``timeout_s`` passed.

        Each announced id is removed from the set (its status kept in :attr:`final`); True when
        the set became empty.
        """
        if not pending:
            return True
        if self._conn is None:
            self._sleep(max(0.0, timeout_s))
            return False
        import psycopg

        deadline = time.monotonic() + max(0.0, timeout_s)
        try:
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                for note in self._conn.notifies(timeout=left):
                    self.received += 1
                    job_id, status = parse_done(note.payload)
                    if job_id in pending:
                        pending.discard(job_id)
                        if status is not None:
                            self.final[job_id] = status
                    if not pending:
                        return True
        except psycopg.OperationalError as exc:
            raise LedgerUnavailable(f"lost the connection listening for finished jobs: {exc}") from exc
        return True

    def close(self) -> None:
        """Close the listening connection, if any."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

