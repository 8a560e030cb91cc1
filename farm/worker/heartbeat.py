"""Keeping the leases of claimed jobs alive while they load, render, encode and record.

One :class:`Heartbeat` per runner, one background thread: every ``interval`` seconds it extends
the lease of every job it tracks (``Ledger.heartbeat``, with the progress the step callback
reports). :meth:`Heartbeat.tracking` brackets a claimed batch; a job's beats end when its outcome
is recorded (:meth:`Heartbeat.finish`). A refused heartbeat (the job was cancelled, or its lease
was taken over) marks the job *lost*: the render stops it at its next step. An unreachable ledger
is logged and tried again at the next beat (the lease outlasts short outages).

The thread outlives a batch, so that a worker taking jobs one after another does not start a
thread per job; with nothing to beat for :data:`IDLE_EXIT_S` it ends, and the next batch starts
another. When :meth:`Heartbeat.tracking` returns, no beat of its jobs is under way or to come.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from farm.errors import TransientError

if TYPE_CHECKING:
    from farm.ledger import JobRecord, Ledger

log = logging.getLogger(__name__)

#: A heartbeat thread with no job to beat for this long ends (seconds).
IDLE_EXIT_S = 30.0
#: The longest :meth:`Heartbeat.tracking` waits, when it ends, for a beat under way (seconds).
BEAT_WAIT_S = 30.0


class Heartbeat:
    """Extends the leases of the jobs it tracks, every ``interval`` seconds (see the module docstring)."""

    def __init__(self, ledger: Ledger, *, worker_host: str, lease_s: float, interval: float,
                 idle_exit_s: float = IDLE_EXIT_S) -> None:
        self.ledger = ledger
        self.worker_host = worker_host
        self.lease_s = lease_s
        self.interval = interval
        self.idle_exit_s = idle_exit_s
        #: Progress in [0, 1] of each tracked job (written by the step callback).
        self.progress: dict[str, float] = {}
        #: Tracked jobs whose heartbeat was refused: stop rendering them.
        self.lost: set[str] = set()
        self._beating: set[str] = set()  # tracked, outcome not recorded yet
        self._lock = threading.Lock()  # the sets, the dict and the thread
        self._beat_lock = threading.Lock()  # held while a beat runs
        self._thread: threading.Thread | None = None

    @contextmanager
    def tracking(self, jobs: Sequence[JobRecord]) -> Iterator[Heartbeat]:
        """Beat ``jobs`` until the block ends (or each one's :meth:`finish`)."""
        ids = [j.id for j in jobs]
        with self._lock:
            for job_id in ids:
                self.progress[job_id] = 0.0
                self.lost.discard(job_id)
                self._beating.add(job_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="farm-heartbeat", daemon=True)
                self._thread.start()
        try:
            yield self
        finally:
            with self._lock:
                for job_id in ids:
                    self._beating.discard(job_id)
            # A beat already under way may still be extending one of them: let it end.
            if self._beat_lock.acquire(timeout=BEAT_WAIT_S):
                self._beat_lock.release()
            with self._lock:
                for job_id in ids:
                    self.progress.pop(job_id, None)
                    self.lost.discard(job_id)

    def finish(self, job_id: str) -> None:
        """The job's outcome is recorded: no more heartbeats for it."""
        with self._lock:
            self._beating.discard(job_id)

    def _loop(self) -> None:
        idle_since: float | None = None
        while True:
            time.sleep(self.interval)
            with self._lock:
                if self._beating:
                    idle_since = None
                else:
                    idle_since = time.monotonic() if idle_since is None else idle_since
                    if time.monotonic() - idle_since >= self.idle_exit_s:
                        self._thread = None  # (the next tracking() starts another)
                        return
                    continue
            self.beat()

    def beat(self) -> None:
        """Extend the lease of every tracked job still running; a refused one marks the job lost."""
        with self._beat_lock:
            with self._lock:
                todo = [(job_id, self.progress.get(job_id, 0.0)) for job_id in self._beating
                        if job_id not in self.lost]
            for job_id, progress in todo:
                with self._lock:
                    if job_id not in self._beating:
                        continue
                try:
                    alive = self.ledger.heartbeat(job_id, worker_host=self.worker_host, lease_s=self.lease_s,
                                                  progress=min(1.0, max(0.0, progress)))
                except TransientError as exc:
                    log.warning("job %s: heartbeat failed (%s); trying again in %.0f s", job_id, exc, self.interval)
                    continue
                except Exception:
                    log.exception("job %s: heartbeat failed", job_id)
                    continue
                with self._lock:
                    if alive or job_id not in self._beating:  # (finished meanwhile: its outcome was just recorded)
                        continue
                    self.lost.add(job_id)
                log.warning("job %s: lease lost (cancelled or taken over): stopping its render", job_id)
