"""Plain snapshots of ledger rows (frozen dataclasses) and the description of a job to add.

Nothing here talks to the database: the gateway (:class:`farm.ledger.manager.Ledger`) builds
these from rows. ``to_dict()`` gives a JSON-ready form (ISO-8601 times, status strings).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from farm.ledger.status import JobStatus
from farm.settings import DEFAULT_MAX_ATTEMPTS
from farm.spec import RenderSpec, compat_digest, job_key_from_canonical, spec_from_canonical


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, JobStatus):
        return value.value
    return value


def new_id() -> str:
    """A fresh job or batch id: a random UUID in its 36-character text form."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class NewJob:
    """A job to add to the ledger (see :meth:`NewJob.from_spec`)."""

    id: str
    job_key: str
    prompt: str
    negative_prompt: str | None
    seed: int
    seed_strategy: str
    model_name: str
    priority: str
    #: The full canonical spec.
    params: Mapping[str, Any]
    #: What the user asked for.
    requested_params: Mapping[str, Any]
    tags: Mapping[str, str] = field(default_factory=dict)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    batch_id: str | None = None
    parent_job_id: str | None = None
    #: Position in the manifest expansion (batch jobs).
    batch_index: int | None = None
    #: Never answer this job from another job's output (no cache hit, never a follower).
    no_cache: bool = False
    #: ``farm.spec.compat_digest(params)``; computed from ``params`` when left empty.
    compat_key: str = ""
    #: May render at its profile's degraded (``draft``) settings when the farm is under load.
    allow_degrade: bool = False

    def __post_init__(self) -> None:
        if not self.compat_key:
            object.__setattr__(self, "compat_key", compat_digest(self.params))

    @classmethod
    def from_spec(
        cls,
        spec: RenderSpec,
        *,
        batch_id: str | None = None,
        parent_job_id: str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        job_id: str | None = None,
        batch_index: int | None = None,
        no_cache: bool = False,
        job_key: str | None = None,
    ) -> NewJob:
        """The job for ``spec`` (``job_key``: the spec's key when the caller computed it already)."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        canon = spec.canonical()
        return cls(
            id=job_id or new_id(),
            job_key=job_key or job_key_from_canonical(canon),
            prompt=canon["prompt"],
            negative_prompt=canon["negative_prompt"],
            seed=canon["seed"],
            seed_strategy=canon["seed_strategy"],
            model_name=canon["model"],
            priority=canon["priority"],
            params=canon,
            requested_params=spec.model_dump(mode="json", exclude_none=True),
            tags=dict(canon["tags"]),
            max_attempts=max_attempts,
            batch_id=batch_id,
            parent_job_id=parent_job_id,
            batch_index=batch_index,
            no_cache=no_cache,
            compat_key=compat_digest(canon),
            allow_degrade=bool(canon.get("allow_degrade", False)),
        )


@dataclass(frozen=True)
class JobRecord:
    """Every column of one job, as read in one transaction."""

    id: str
    job_key: str
    batch_id: str | None
    status: JobStatus
    prompt: str
    negative_prompt: str | None
    seed: int
    seed_strategy: str
    params: dict[str, Any]
    requested_params: dict[str, Any]
    effective_params: dict[str, Any] | None
    model_name: str
    weights_fingerprint: str | None
    priority: str
    attempts: int
    max_attempts: int
    worker_host: str | None
    worker_device: str | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timings: dict[str, Any] | None
    output_uri: str | None
    file_sha256: str | None
    frames_sha256: str | None
    env_fingerprint: dict[str, Any] | None
    error_type: str | None
    error_message: str | None
    parent_job_id: str | None
    cache_of_job_id: str | None
    tags: dict[str, str]
    starred: bool
    progress: float
    batch_index: int | None
    compat_key: str
    enqueued_at: datetime | None
    no_cache: bool
    #: May render at its profile's degraded (``draft``) settings when the farm is under load.
    allow_degrade: bool = False
    #: Why it rendered degraded (None: as asked). A degraded output never answers another job.
    degraded_reason: str | None = None
    #: Review labels (the seed library's tags), sorted, no duplicates.
    labels: list[str] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> JobRecord:
        """The record of a ``jobs`` row."""
        data = {f.name: row[f.name] for f in fields(cls)}
        data["labels"] = list(data["labels"] or [])
        data["status"] = JobStatus(data["status"])
        data["starred"] = bool(data["starred"])
        data["no_cache"] = bool(data["no_cache"])
        data["allow_degrade"] = bool(data["allow_degrade"])
        data["progress"] = float(data["progress"])
        return cls(**data)

    @property
    def terminal(self) -> bool:
        """True when the job's status is final (succeeded, failed or cancelled)."""
        return self.status.terminal

    @property
    def follower(self) -> bool:
        """Queued behind a leader with the same job key (``cache_of_job_id``).

        Never enqueued or claimed; answered when the leader succeeds, released when it fails or
        is cancelled.
        """
        return self.status is JobStatus.QUEUED and self.cache_of_job_id is not None

    @property
    def cache_hit(self) -> bool:
        """Succeeded with another job's output, without rendering."""
        return self.status is JobStatus.SUCCEEDED and self.cache_of_job_id is not None

    def spec(self) -> RenderSpec:
        """The render spec this job was created from (rebuilt from its canonical form)."""
        return spec_from_canonical(self.params)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (times in ISO 8601, the status as text)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class JobProgress:
    """How far one job is: what a status report needs of it (a narrow read of its row)."""

    id: str
    status: JobStatus
    progress: float
    started_at: datetime | None


@dataclass(frozen=True)
class BatchRecord:
    """One row of the ``batches`` table."""

    id: str
    manifest_digest: str
    name: str
    source_name: str
    created_at: datetime
    job_count: int
    #: The highest batch_index confirmed sent (-1: none).
    sent_through: int = -1

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> BatchRecord:
        """The record of a ``batches`` row."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (times in ISO 8601)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class EventRecord:
    """One entry of a job's append-only trail."""

    id: int
    job_id: str
    at: datetime
    from_status: JobStatus | None
    to_status: JobStatus
    kind: str
    worker: str | None
    detail: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> EventRecord:
        """The record of an ``events`` row."""
        data = {f.name: row[f.name] for f in fields(cls)}
        data["from_status"] = None if data["from_status"] is None else JobStatus(data["from_status"])
        data["to_status"] = JobStatus(data["to_status"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (times in ISO 8601, statuses as text)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class WorkerRecord:
    """One row of the ``workers`` table."""

    name: str
    host: str
    device: str
    pid: int
    state: str
    consecutive_failures: int
    jobs_succeeded: int
    jobs_failed: int
    started_at: datetime
    last_seen_at: datetime
    detail: dict[str, Any] | None
    #: Models whose weights it verified at start: it consumes only their routes' queues.
    models: list[str] | None = None
    #: Its free-form tags (``h200``, ``4090``), as declared with ``farm worker --tags``.
    tags: list[str] | None = None

    def serves(self, model: str) -> bool:
        """Whether it consumes ``model``'s queues (a row of a worker from before routing: every model)."""
        return self.models is None or model in self.models

    def live(self, now: datetime, stale_after_s: float) -> bool:
        """Seen within ``stale_after_s`` and not stopped."""
        return self.state != "stopped" and (now - self.last_seen_at).total_seconds() <= stale_after_s

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> WorkerRecord:
        """The record of a ``workers`` row."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (times in ISO 8601)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class ModelRecord:
    """One row of the ``models`` table."""

    name: str
    weights_fingerprint: str
    updated_at: datetime
    worker: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ModelRecord:
        """The record of a ``models`` row."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (times in ISO 8601)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class OutputRecord:
    """One row of the ``outputs`` table: a stored file and its integrity state."""

    uri: str
    file_sha256: str
    frames_sha256: str | None
    size_bytes: int | None
    state: str
    verified_at: datetime | None
    checked_at: datetime
    detail: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> OutputRecord:
        """The record of an ``outputs`` row."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    @property
    def ok(self) -> bool:
        """True when the output is in state ``ok`` (the cache may answer from it)."""
        return self.state == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (times in ISO 8601)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class OutputMark:
    """What a check found about one output, to record (:meth:`Ledger.mark_outputs`)."""

    uri: str
    state: str
    #: The sha256 the check compared against (the record's).
    expected_sha256: str
    detail: str = ""
    #: The file's sha256 and size as the check found them (None: not hashed / not found).
    actual_sha256: str | None = None
    size_bytes: int | None = None


@dataclass(frozen=True)
class Admission:
    """What adding jobs did with each of them (:meth:`farm.ledger.manager.Ledger.admit`)."""

    job_ids: list[str]
    #: ``(job_id, route)`` of the jobs that need a wake-up message (route: class and model), in order (batches: in
    #: ``batch_index`` order; :attr:`to_send_index` holds each one's index).
    to_send: list[tuple[str, str]]
    #: Cache hits: job id -> the job whose output answered it (already succeeded).
    answered: dict[str, str]
    #: Followers: job id -> the identical queued or running job they wait for.
    following: dict[str, str]
    batch_id: str | None = None
    #: False when the batch existed already (nothing was written).
    created: bool = True
    #: The ``batch_index`` of each job of :attr:`to_send` (batches only).
    to_send_index: list[int] = field(default_factory=list)
    #: The batch's job count (batches only): confirming it sent through ``job_count - 1`` closes it.
    job_count: int = 0
