"""The render worker: what runs inside ``farm worker`` processes.

* ``process`` — the per-process runtime (claim, batch, run, retry, circuit breaker, reaper,
  shutdown);
* ``supervisor`` — ``farm worker --devices``: one process per GPU, restarted on crash;
* ``faults`` — test-only fault injection (``FARM_FAULT_INJECTION``).

Importing this package is cheap: torch is imported when a worker builds its engine.
"""
