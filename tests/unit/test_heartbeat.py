"""The runner's heartbeat (farm.worker.heartbeat): one thread beats the tracked jobs, outlives a batch."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from farm.errors import LedgerUnavailable
from farm.worker.heartbeat import Heartbeat

INTERVAL_S = 0.02


@dataclass
class Job:
    id: str


class FakeLedger:
    """Records heartbeats; refuses those of ``refused`` jobs; ``slow`` makes a beat take that long."""

    def __init__(self) -> None:
        self.beats: list[tuple[str, float | None, float]] = []
        self.refused: set[str] = set()
        self.failing = False
        self.slow_s = 0.0
        self.lock = threading.Lock()

    def heartbeat(self, job_id: str, *, worker_host: str, lease_s: float, progress: float | None = None) -> bool:
        assert worker_host == "w1" and lease_s == 60
        if self.failing:
            raise LedgerUnavailable("down")
        time.sleep(self.slow_s)
        with self.lock:
            self.beats.append((job_id, progress, time.monotonic()))
        return job_id not in self.refused

    def of(self, job_id: str) -> list[float | None]:
        with self.lock:
            return [p for j, p, _ in self.beats if j == job_id]


def heartbeat(ledger: FakeLedger, **kwargs: Any) -> Heartbeat:
    return Heartbeat(ledger, worker_host="w1", lease_s=60, interval=INTERVAL_S, **kwargs)  # type: ignore[arg-type]


def wait_until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_tracked_jobs_are_beaten_with_their_progress_until_finished() -> None:
    ledger = FakeLedger()
    beat = heartbeat(ledger)
    with beat.tracking([Job("a"), Job("b")]):
        beat.progress["a"] = 0.5
        wait_until(lambda: len(ledger.of("a")) >= 2 and len(ledger.of("b")) >= 2)
        assert 0.5 in ledger.of("a")
        beat.finish("a")
        time.sleep(INTERVAL_S)  # a beat under way may still carry it
        seen, b_seen = len(ledger.of("a")), len(ledger.of("b"))
        wait_until(lambda: len(ledger.of("b")) >= b_seen + 3)
        assert len(ledger.of("a")) == seen  # finished: no more
    after = len(ledger.beats)
    time.sleep(5 * INTERVAL_S)
    assert len(ledger.beats) == after  # the batch ended: nothing beaten any more


def test_a_refused_heartbeat_marks_the_job_lost_and_stops_its_beats() -> None:
    ledger = FakeLedger()
    ledger.refused.add("a")
    beat = heartbeat(ledger)
    with beat.tracking([Job("a"), Job("b")]):
        wait_until(lambda: "a" in beat.lost)
        count = len(ledger.of("a"))
        wait_until(lambda: len(ledger.of("b")) >= count + 3)
        assert len(ledger.of("a")) == count and "b" not in beat.lost
    assert beat.lost == set()  # forgotten with the batch


def test_an_unreachable_ledger_is_tried_again_at_the_next_beat() -> None:
    ledger = FakeLedger()
    ledger.failing = True
    beat = heartbeat(ledger)
    with beat.tracking([Job("a")]):
        time.sleep(4 * INTERVAL_S)
        assert ledger.of("a") == [] and beat.lost == set()
        ledger.failing = False
        wait_until(lambda: len(ledger.of("a")) >= 1)


def test_one_thread_serves_batch_after_batch_and_ends_when_idle() -> None:
    ledger = FakeLedger()
    beat = heartbeat(ledger, idle_exit_s=10 * INTERVAL_S)
    with beat.tracking([Job("a")]):
        first = beat._thread
        wait_until(lambda: len(ledger.of("a")) >= 1)
    with beat.tracking([Job("b")]):
        assert beat._thread is first and first is not None and first.is_alive()  # no new thread per batch
        wait_until(lambda: len(ledger.of("b")) >= 1)
    first.join(timeout=5)
    assert not first.is_alive() and beat._thread is None  # idle: ended
    with beat.tracking([Job("c")]):  # the next batch starts another
        assert beat._thread is not None and beat._thread is not first
        wait_until(lambda: len(ledger.of("c")) >= 1)


def test_when_tracking_ends_no_beat_of_its_jobs_is_under_way() -> None:
    ledger = FakeLedger()
    ledger.slow_s = 5 * INTERVAL_S
    beat = heartbeat(ledger)
    started = threading.Event()
    original = ledger.heartbeat

    def marking(job_id: str, **kwargs: Any) -> bool:
        started.set()
        return original(job_id, **kwargs)

    ledger.heartbeat = marking  # type: ignore[method-assign]
    with beat.tracking([Job("a")]):
        assert started.wait(5)  # a slow beat is under way ...
    ended = time.monotonic()
    # ... and had finished when tracking() returned
    assert ledger.of("a") and all(at <= ended for j, _, at in ledger.beats if j == "a")
    time.sleep(3 * ledger.slow_s)
    assert all(at <= ended for j, _, at in ledger.beats if j == "a")
