"""Typed answers of the API's read and library routes: a job, pages of jobs and batches, labels, stars.

Every answer has a model, so the OpenAPI schema says exactly what comes back (and a fuzzer can
check it): :class:`JobView` (one job: every recorded field but the server-side output path, its
degradation, its download URLs), :class:`JobPage` / :class:`BatchPage` (a page of a list, with
``next_offset`` and an RFC 8288 ``Link: <...>; rel="next"`` header when there is more),
:class:`BatchSummary` (a batch with its counts per status), :class:`CancelView`,
:class:`ReadyView`, :class:`HealthView`, :class:`LabelsBody` / :class:`LabelsView` and :class:`StarView`.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from farm.ledger.status import JobStatus
from farm.spec import Priority

#: A job status, as the API writes it.
StatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
if set(get_args(StatusName)) != {s.value for s in JobStatus}:  # pragma: no cover - a new status needs it here
    raise RuntimeError("farm.api.views.StatusName must list every JobStatus")


class JobView(BaseModel):
    """One job as the API shows it (``GET /v1/jobs/{job_id}``, each item of ``GET /v1/jobs``).

    Times are ISO 8601 (UTC); ``params`` is the canonical spec, ``requested_params`` what was
    asked, ``effective_params`` what rendered (after any degradation).
    """

    id: str
    job_key: str
    batch_id: str | None
    status: StatusName
    prompt: str
    negative_prompt: str | None
    seed: int
    seed_strategy: str
    params: dict[str, Any]
    requested_params: dict[str, Any]
    effective_params: dict[str, Any] | None
    model_name: str
    weights_fingerprint: str | None
    priority: Priority
    attempts: int
    max_attempts: int
    worker_host: str | None
    worker_device: str | None
    lease_expires_at: str | None
    heartbeat_at: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    timings: dict[str, Any] | None
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
    enqueued_at: str | None
    no_cache: bool
    allow_degrade: bool
    degraded_reason: str | None
    labels: list[str] = Field(description="Review labels, sorted (PUT /v1/jobs/{job_id}/labels).")
    requested_steps: int | None = Field(description="The steps the spec asked for.")
    effective_steps: int | None = Field(description="The steps it rendered with (None until it rendered).")
    video_url: str | None = Field(description="Where to download the MP4 once it succeeded.")
    poster_url: str | None = Field(description="Where to download the poster PNG once it succeeded.")
    waiting: list[str] = Field(default_factory=list, description="Why a queued job cannot start (only filled "
                               "by GET /v1/jobs/{job_id}).")


class Page(BaseModel):
    """The paging fields of every list answer."""

    limit: int = Field(description="The page size asked for.")
    offset: int = Field(description="How many items were skipped.")
    next_offset: int | None = Field(description="The offset of the next page; null on the last page.")


class JobPage(Page):
    """A page of ``GET /v1/jobs``: jobs, newest first."""

    items: list[JobView]


class BatchSummary(BaseModel):
    """A batch with how many of its jobs are in each status (an item of ``GET /v1/batches``)."""

    id: str
    name: str
    source_name: str
    manifest_digest: str
    created_at: str
    job_count: int = Field(description="How many jobs the batch has (the total).")
    counts: dict[str, int] = Field(description="Jobs per status (every status, zeros included).")
    finished: int = Field(description="Jobs that succeeded, failed or were cancelled.")
    done: bool = Field(description="True when every job finished (finished == job_count).")


class BatchPage(Page):
    """A page of ``GET /v1/batches``: batches, newest first."""

    items: list[BatchSummary]


class CancelView(BaseModel):
    """What a cancel did: the jobs cancelled, and those left alone because they had finished."""

    id: str
    kind: Literal["job", "batch"]
    cancelled: list[str]
    unchanged: dict[str, str] = Field(description="Job id -> its (final) status.")


DependencyState = Literal["ok", "unavailable"]


class ReadyView(BaseModel):
    """``/readyz``: ``ready`` or ``not ready``, and whether the ledger and the broker answer."""

    status: Literal["ready", "not ready"]
    ledger: DependencyState
    broker: DependencyState


class HealthView(BaseModel):
    """``/healthz``: the process serves requests."""

    status: Literal["ok"]


class LabelsBody(BaseModel):
    """The body of ``PUT /v1/jobs/{job_id}/labels``: the job's new labels (replacing the old ones)."""

    model_config = ConfigDict(extra="forbid")

    labels: list[StrictStr]


class LabelsView(BaseModel):
    """A job's review labels after a change: sorted, no duplicates, lowercase."""

    job_id: str
    labels: list[str]


class StarView(BaseModel):
    """A job's star after ``POST`` (star) or ``DELETE`` (unstar) ``/v1/jobs/{job_id}/star``."""

    job_id: str
    starred: bool
    changed: bool = Field(description="False when the job already was starred (or unstarred).")
