"""farm's producer API: submit renders and batches, follow them, check them.

::

    from farm.client import Client

    with Client.from_settings() as client:           # FARM_DATABASE_URL, FARM_BROKER_URL, ...
        [job_id] = client.submit("a red fox in snow", seed=7, priority="interactive")
        sub = client.submit_batch("day.yaml")         # BatchSubmission(batch_id, created, ...)
        report = client.wait(sub.batch_id, timeout_s=3600)
        rows = client.results(sub.batch_id)

Operations (all validate every input before writing or sending anything):

* ``submit(prompt, *, seed=None, seed_from_prompt=False, salt="", sweep=None, model=None,
  priority="interactive", no_cache=False, idempotency_key=None, **spec_fields) -> list[str]``
  (``submit_detailed`` returns a :class:`JobSubmission`);
* ``submit_batch(path_or_manifest, *, no_cache=False) -> BatchSubmission``;
* ``status(id) -> StatusReport`` and ``wait(id, timeout_s=None, poll_s=1.0)`` (a job or a batch);
* ``results(batch_id) -> list[dict]``; ``cancel(id) -> CancelReport``;
  ``star(job_id, starred=True) -> bool``; ``set_labels(job_id, labels) -> list[str]`` (the seed
  library's review labels); ``sweep(job_id, radius) -> list[str]``;
* ``list_jobs(batch_id=, status=, starred=, tag=, label=, prompt=, limit=, offset=)`` and
  ``list_batches(limit=, offset=)`` (newest first);
* ``rerender(job_id, wait=False, timeout_s=None) -> RerenderReport``;
  ``audit(batch_id=None) -> AuditReport``.

Design notes:

* **Idempotency keys** are stored as a batch whose digest is ``sha256("idem:" + key)``: the
  ledger's batch-digest uniqueness (``create_batch``) makes a repeated key return the first
  request's jobs, even between concurrent producers. The key names the request: a repeat returns
  the first request's jobs whatever its arguments.
* **Sweeps of a job** (``sweep(job_id, radius)``) take any *succeeded* job (starred or not:
  starring is a bookmark, not a gate) and refuse others; the neighbours record the job as their
  ``parent_job_id`` and ``seed_strategy="sweep"``.
* A manifest submitted with ``no_cache`` is a different batch from the same manifest without it
  (digest ``sha256("no-cache:" + manifest digest)``), so "render all of it again" is possible and
  itself idempotent.

Importing this package is cheap: the client module (SQLAlchemy through the ledger) loads on first
use. Torch-free throughout.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from farm.client.core import Client
    from farm.client.reports import (
        AuditEntry,
        AuditReport,
        BatchSubmission,
        CancelReport,
        Difference,
        JobSubmission,
        RerenderReport,
        StatusReport,
    )

_LAZY: dict[str, str] = {
    "Client": "farm.client.core",
    "AuditEntry": "farm.client.reports",
    "AuditReport": "farm.client.reports",
    "BatchSubmission": "farm.client.reports",
    "CancelReport": "farm.client.reports",
    "Difference": "farm.client.reports",
    "JobSubmission": "farm.client.reports",
    "RerenderReport": "farm.client.reports",
    "StatusReport": "farm.client.reports",
}

__all__ = [
    "AuditEntry",
    "AuditReport",
    "BatchSubmission",
    "CancelReport",
    "Client",
    "Difference",
    "JobSubmission",
    "RerenderReport",
    "StatusReport",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'farm.client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
