"""Test-only fault injection: jobs tagged ``fault`` misbehave on purpose when they start rendering.

Active only when ``FARM_FAULT_INJECTION=1`` (``settings.fault_injection``); otherwise the tag is an
ordinary tag. The tag's values:

* ``crash`` — the worker process dies at once (``os._exit(137)``, as if the kernel killed it):
  no outcome is recorded, the lease expires, the reaper takes over.
* ``sleep:S`` — sleep S seconds inside the render (the job's lease keeps being heartbeated);
  ends early when the worker is told to stop or every job of the group lost its lease.
* ``fail`` — the job fails with a permanent error (:class:`InjectedFailure`).

The runner calls :func:`make_hook` 's result with each group right before rendering it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from farm.errors import ExpectedError
from farm.ledger import JobRecord
from farm.worker.runner import BeforeRender

log = logging.getLogger(__name__)

#: The tag that carries a fault.
FAULT_TAG = "fault"
#: Exit status of an injected crash (what a SIGKILL looks like to a parent: 128 + 9).
CRASH_EXIT_STATUS = 137
#: Longest injected sleep, and how often a sleep checks whether to stop.
MAX_SLEEP_S = 3600.0
SLEEP_SLICE_S = 0.1


class InjectedFailure(ExpectedError):
    """The permanent error a ``fault: fail`` job raises.

    It plays a worker that fails whatever it renders (a broken driver), so it counts towards the
    circuit breaker.
    """

    worker_fault = True


def parse_fault(value: str) -> tuple[str, float]:
    """``"crash"`` / ``"fail"`` / ``"sleep:S"`` -> ``(kind, seconds)``; ValueError otherwise."""
    kind, _, arg = value.strip().partition(":")
    if kind in ("crash", "fail") and not arg:
        return kind, 0.0
    if kind == "sleep":
        seconds = float(arg)
        if not 0 <= seconds <= MAX_SLEEP_S:
            raise ValueError(f"fault sleep must be in [0, {MAX_SLEEP_S}] seconds, got {seconds}")
        return kind, seconds
    raise ValueError(f"unknown fault {value!r}: crash, fail or sleep:SECONDS")


def crash() -> None:
    """Die now, like a killed process: no cleanup, no outcome recorded."""
    sys.stderr.flush()
    os._exit(CRASH_EXIT_STATUS)


def apply_faults(
    jobs: Sequence[JobRecord],
    should_stop: Callable[[], bool],
    *,
    sleep: Callable[[float], None] = time.sleep,
    die: Callable[[], None] = crash,
    clock: Callable[[], float] = time.monotonic,
) -> Mapping[str, BaseException]:
    """Apply the ``fault`` tags of a group about to render.

    Crash at once if any job says so, sleep for the longest ``sleep:S``, and return the
    ``fail`` jobs with their error.
    """
    failing: dict[str, BaseException] = {}
    longest = 0.0
    for job in jobs:
        value = job.tags.get(FAULT_TAG)
        if value is None:
            continue
        try:
            kind, seconds = parse_fault(value)
        except ValueError as exc:
            log.warning("job %s: ignoring fault tag: %s", job.id, exc)
            continue
        if kind == "crash":
            log.critical("job %s: injected crash (fault: crash): exiting with status %d", job.id, CRASH_EXIT_STATUS)
            die()
        elif kind == "fail":
            failing[job.id] = InjectedFailure(f"injected failure (fault: fail) in job {job.id}")
        else:
            longest = max(longest, seconds)
    if longest > 0:
        log.info("injected sleep of %.1f s (fault: sleep) for %d job(s)", longest, len(jobs))
        deadline = clock() + longest
        while not should_stop():
            left = deadline - clock()
            if left <= 0:
                break
            sleep(min(SLEEP_SLICE_S, left))
    return failing


def make_hook(enabled: bool) -> BeforeRender | None:
    """The runner's ``before_render`` hook: :func:`apply_faults` when fault injection is on."""
    return apply_faults if enabled else None
