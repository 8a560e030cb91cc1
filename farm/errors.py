"""farm's one exception hierarchy.

Two families matter to a worker:

* :class:`ExpectedError` — permanent: retrying cannot help (invalid spec, missing weights, an
  illegal state transition). The job fails at once with the reason.
* :class:`TransientError` — a hiccup (ledger or broker unreachable, a write error, one CUDA
  out-of-memory): the job is retried with backoff, up to its attempt cap.

Each class also says whether it is the *worker's* fault (:attr:`FarmError.worker_fault`): only
those failures count towards a worker's circuit breaker. A job's own problem (a spec the model
cannot render, an output location refused) fails that job and says nothing about the worker.
:func:`classify` is the one place that turns an exception into that decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class FarmError(Exception):
    """Base of every error farm raises on purpose."""

    #: True when the failure says this worker (its device, disk, weights) is unwell: it counts
    #: towards the worker's circuit breaker.
    worker_fault: bool = False


class ExpectedError(FarmError):
    """A permanent failure: the same input will fail the same way."""


class TransientError(FarmError):
    """A failure that may pass: retry with backoff."""

    worker_fault = True


@dataclass(frozen=True)
class Verdict:
    """What to do with a job whose attempt raised.

    Retry it (while attempts remain) or fail it, and whether the failure counts against the
    worker.
    """

    retry: bool
    worker_fault: bool


def classify(exc: BaseException) -> Verdict:
    """The one retry/fail decision.

    Permanent errors fail at once, transient ones retry; anything unexpected (a bug, the
    environment) retries, capped by the job's attempts, and counts against the worker.
    """
    if isinstance(exc, ExpectedError):
        return Verdict(retry=False, worker_fault=exc.worker_fault)
    if isinstance(exc, FarmError):
        return Verdict(retry=True, worker_fault=exc.worker_fault)
    return Verdict(retry=True, worker_fault=True)


# -- input validation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One broken rule: which field, which rule, and a sentence for people."""

    field: str
    rule: str
    message: str
    #: Where the input came from (a manifest file, item, line), when known.
    location: str = ""

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.field}: {self.message} [{self.rule}]"

    def as_dict(self) -> dict[str, str]:
        """The problem as a JSON-ready dict (``location`` only when known)."""
        out = {"field": self.field, "rule": self.rule, "message": self.message}
        if self.location:
            out["location"] = self.location
        return out


class InvalidInput(ExpectedError, ValueError):
    """Input broke one or more rules. Raised before anything is enqueued or rendered."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: list[Problem] = list(problems)
        if not self.problems:
            raise ValueError("InvalidInput needs at least one problem")
        super().__init__("; ".join(str(p) for p in self.problems))

    @property
    def fields(self) -> list[str]:
        """The field of each problem, in order."""
        return [p.field for p in self.problems]

    @classmethod
    def one(cls, field: str, rule: str, message: str, location: str = "") -> InvalidInput:
        """The error for a single problem."""
        return cls([Problem(field, rule, message, location)])


class SpecError(InvalidInput):
    """A render job spec broke a rule."""


class ManifestError(InvalidInput):
    """A batch manifest could not be read or one of its items is invalid."""


class UnknownModel(SpecError):
    """The spec names a model farm has no profile for."""


# -- ledger ------------------------------------------------------------------------------------


class LedgerError(FarmError):
    """Base of ledger errors."""


class JobNotFound(LedgerError, ExpectedError, LookupError):
    """No job has this id."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class BatchNotFound(LedgerError, ExpectedError, LookupError):
    """No batch has this id."""

    def __init__(self, batch_id: str):
        self.batch_id = batch_id
        super().__init__(f"no batch with id {batch_id!r}")


class IllegalTransition(LedgerError, ExpectedError):
    """A status change the state machine does not allow (nothing was written)."""

    def __init__(self, job_id: str, current: str | None, target: str):
        self.job_id = job_id
        self.current = current
        self.target = target
        super().__init__(f"job {job_id}: illegal transition {current} -> {target}")


class LedgerUnavailable(LedgerError, TransientError):
    """The ledger database could not be reached or the transaction failed transiently."""

    worker_fault = False  # every worker sees the same outage: not a reason to stop this one


class SchemaOutOfDate(LedgerError, ExpectedError):
    """The ledger database is not migrated to the code's schema: run ``farm db upgrade``."""


# -- models and rendering ----------------------------------------------------------------------


class ModelError(ExpectedError):
    """Base of model loading errors (this worker cannot render the model: its fault)."""

    worker_fault = True


class WeightsNotFound(ModelError):
    """The model's local Diffusers-format directory is missing or incomplete."""

    def __init__(self, directory: str, expected: str):
        self.directory = directory
        self.expected = expected
        super().__init__(f"model weights not usable at {directory}: {expected}")


class IncompatibleJob(ExpectedError):
    """A job that is valid in general but cannot run on the chosen model (e.g. frame count)."""


class RenderCancelled(ExpectedError):
    """The job was cancelled while rendering (checked at each step)."""


class OutOfMemory(TransientError):
    """The accelerator ran out of memory during a render; caches were cleared."""

    def __init__(self, message: str, *, stage: str = "", device: str = ""):
        self.stage = stage
        self.device = device
        super().__init__(message)


class BrokerUnavailable(TransientError):
    """The message broker could not be reached (messages are sent again later by the reaper)."""

    worker_fault = False


class StorageError(TransientError):
    """Writing or reading an output file failed (I/O: a full disk, a lost mount): retried."""


class StoreUnavailable(StorageError):
    """The object store (s3) could not be reached or answered with an error: retried.

    A worker keeps its render and tries the upload again; a job is never recorded succeeded
    before its objects are confirmed in the store.
    """


class OutputNotReady(ExpectedError):
    """The job has no output to serve yet (it has not succeeded)."""


class OutputMissing(ExpectedError):
    """The job succeeded but its stored file is gone (``farm audit --repair`` restores it)."""


class OutputRefused(ExpectedError):
    """The store refuses an output location (it resolves outside the output root).

    Permanent, and that output's problem, not the worker's.
    """
