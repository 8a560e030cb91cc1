"""What the client's operations return.

Plain dataclasses with ``to_dict()`` (JSON-ready), and the pure functions that build them from
ledger records (no I/O here).

Torch-free, SQLAlchemy-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from farm.ledger.records import JobProgress, JobRecord, WorkerRecord
    from farm.ledger.stats import Pace

#: Status names in display order (the values stored in the ledger).
STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
#: A group's ETA is shown once this many of its jobs were rendered to the end (and at least one
#: per worker rendering it): before that there is no pace to go by.
MIN_RENDERED_FOR_ETA = 2


def _status(value: Any) -> str:
    return str(getattr(value, "value", value))


@dataclass(frozen=True)
class JobSubmission:
    """What :meth:`Client.submit_detailed` did."""

    job_ids: list[str]
    #: False when the idempotency key had been used before (the first request's jobs returned).
    created: bool
    #: Messages sent now (jobs answered from the cache and followers of an identical job get none).
    enqueued: int
    #: Jobs accepted (in the ledger) whose message could not be sent now: the reaper sends them.
    not_sent: int = 0
    #: The jobs' seeds (in job order) and how they were chosen.
    seeds: list[int] = field(default_factory=list)
    seed_strategy: str = ""
    #: The group of a sweep (or of an idempotent submission): one id for ``farm wait``/``status``.
    batch_id: str | None = None
    #: The first job's status and the job it follows or was answered from (cache).
    first_status: str = "queued"
    cache_of: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The submission as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class BatchSubmission:
    """What :meth:`Client.submit_batch` did."""

    batch_id: str
    #: False when the same manifest had been submitted before (nothing new written).
    created: bool
    job_count: int
    #: Messages sent by this call: every job the first time, only the never-sent ones after.
    enqueued: int
    not_sent: int = 0
    name: str = ""
    digest: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The submission as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class StatusReport:
    """Where a job or a batch stands."""

    id: str
    kind: str  # "job" or "batch"
    total: int
    counts: dict[str, int]
    #: Fraction of the work done: finished jobs plus the progress of running ones, over total.
    progress: float
    #: Seconds to go at the pace so far (``None`` when there is no pace yet; 0 when finished).
    eta_s: float | None
    #: True when :meth:`Client.wait` gave up before every job finished.
    timed_out: bool = False
    #: Why queued jobs wait, when something other than the queue ahead of them holds them (no live
    #: worker serves their model); empty otherwise (:meth:`Client.status` fills it).
    waiting: tuple[str, ...] = ()

    @property
    def done(self) -> int:
        """Jobs in a terminal status (succeeded, failed or cancelled)."""
        return sum(self.counts.get(s, 0) for s in TERMINAL_STATUSES)

    @property
    def finished(self) -> bool:
        """True when every job is in a terminal status."""
        return self.done >= self.total

    @property
    def all_succeeded(self) -> bool:
        """True when every job succeeded."""
        return self.counts.get("succeeded", 0) == self.total

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict, with ``done``, ``finished`` and ``all_succeeded``."""
        out = asdict(self)
        out.update(done=self.done, finished=self.finished, all_succeeded=self.all_succeeded)
        return out


def waiting_reasons(queued: Mapping[str, int], workers: Sequence[WorkerRecord], now: datetime,
                    stale_after_s: float) -> tuple[str, ...]:
    """Why queued jobs of each model cannot start: no live worker serves it, or each one's circuit is open.

    ``queued``: model -> queued jobs; ``workers``: every workers row. A model some live worker
    serves gives no reason (its jobs wait for their turn).
    """
    live = [w for w in workers if w.live(now, stale_after_s)]
    served = sorted({m for w in live if w.models is not None for m in w.models})
    reasons = []
    for model, n in sorted(queued.items()):
        if n <= 0:
            continue
        servers = [w for w in live if w.serves(model)]
        if not servers:
            elsewhere = f"live workers serve {', '.join(served)}" if served else "no worker is live"
            reasons.append(f"{n} queued job(s) of model {model}: no live worker serves this model ({elsewhere}); "
                           f"they stay queued until one does")
        elif all(w.state == "circuit_open" for w in servers):
            names = ", ".join(w.name for w in servers)
            reasons.append(f"{n} queued job(s) of model {model}: every worker serving it has its circuit breaker "
                           f"open ({names})")
    return tuple(reasons)


def eta_seconds(total: int, work_done: float, elapsed_s: float) -> float | None:
    """Seconds left at the average pace so far (``None`` before any work was done)."""
    if work_done >= total:
        return 0.0
    if work_done <= 0 or elapsed_s <= 0:
        return None
    return elapsed_s * (total - work_done) / work_done


def pace_eta(total: int, work_done: float, pace: Pace, now: datetime) -> float | None:
    """Seconds left for a group at the pace its workers have rendered it so far.

    The clock starts when the first of its jobs was claimed (time spent queued behind other work
    is not pace), and counts only rendered jobs (cache hits finish instantly and say nothing of
    the pace). ``None`` until :data:`MIN_RENDERED_FOR_ETA` jobs, and one per worker rendering the
    group, have been rendered to the end.
    """
    if work_done >= total:
        return 0.0
    needed = min(max(MIN_RENDERED_FOR_ETA, pace.workers), total)
    if pace.first_started_at is None or pace.rendered_done < needed:
        return None
    elapsed_s = (now - pace.first_started_at).total_seconds()
    rendered = pace.rendered_done + pace.running_progress
    if elapsed_s <= 0 or rendered <= 0:
        return None
    return (total - work_done) * elapsed_s / rendered


def group_status(group_id: str, kind: str, pace: Pace, now: datetime) -> StatusReport:
    """A batch's (or a list of jobs') report from its :class:`~farm.ledger.stats.Pace`."""
    by_name = {s: 0 for s in STATUSES}
    by_name.update({_status(k): int(v) for k, v in pace.counts.items()})
    total = sum(by_name.values())
    work = sum(by_name[s] for s in TERMINAL_STATUSES) + pace.running_progress
    progress = 1.0 if total == 0 else min(1.0, work / total)
    return StatusReport(group_id, kind, total, by_name, progress, pace_eta(total, work, pace, now))


def final_job_status(job_id: str, status: Any) -> StatusReport:
    """The report of a job in the final ``status`` (all that :func:`job_status` says of such a job)."""
    counts = {s: 0 for s in STATUSES}
    counts[_status(status)] = 1
    return StatusReport(job_id, "job", 1, counts, 1.0, 0.0)


def job_status(job: JobRecord | JobProgress, now: datetime) -> StatusReport:
    """One job's report (its ETA from its own progress since it started)."""
    status = _status(job.status)
    if status in TERMINAL_STATUSES:
        return final_job_status(job.id, status)
    counts = {s: 0 for s in STATUSES}
    counts[status] = 1
    eta = None
    if status == "running" and job.started_at is not None:
        eta = eta_seconds(1, job.progress, (now - job.started_at).total_seconds())
    return StatusReport(job.id, "job", 1, counts, job.progress, eta)


# -- results -----------------------------------------------------------------------------------

#: Columns of ``farm results --format csv`` (nested values are JSON text).
RESULT_FIELDS: tuple[str, ...] = (
    "job_id", "batch_id", "batch_index", "status", "prompt", "negative_prompt", "seed", "seed_strategy",
    "model", "priority", "params", "effective_params", "allow_degrade", "degraded_reason", "requested_steps",
    "effective_steps", "output", "output_uri", "file_sha256",
    "frames_sha256", "weights_fingerprint", "timings", "cache_of", "parent_job_id", "starred", "tags",
    "created_at", "started_at", "finished_at", "error_type", "error_message",
)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def degradation(job: JobRecord) -> dict[str, Any]:
    """Whether the job may render degraded, why it did (None: as asked), and the steps asked vs rendered.

    ``effective_steps`` is None until it rendered (or was answered from another job's output).
    """
    effective = job.effective_params or {}
    return {
        "allow_degrade": job.allow_degrade,
        "degraded_reason": job.degraded_reason,
        "requested_steps": job.params.get("steps"),
        "effective_steps": effective.get("steps"),
    }


def result_row(job: JobRecord, output: str | None) -> dict[str, Any]:
    """One job as a results row (every key of :data:`RESULT_FIELDS`).

    ``output`` is the path the output store gives its video.
    """
    return {
        "job_id": job.id,
        "batch_id": job.batch_id,
        "batch_index": getattr(job, "batch_index", None),
        "status": _status(job.status),
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "seed_strategy": job.seed_strategy,
        "model": job.model_name,
        "priority": job.priority,
        "params": dict(job.params),
        "effective_params": None if job.effective_params is None else dict(job.effective_params),
        **degradation(job),
        "output": output,
        "output_uri": job.output_uri,
        "file_sha256": job.file_sha256,
        "frames_sha256": job.frames_sha256,
        "weights_fingerprint": job.weights_fingerprint,
        "timings": None if job.timings is None else dict(job.timings),
        "cache_of": job.cache_of_job_id,
        "parent_job_id": job.parent_job_id,
        "starred": job.starred,
        "tags": dict(job.tags),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "error_type": job.error_type,
        "error_message": job.error_message,
    }


# -- cancel ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CancelReport:
    """What :meth:`Client.cancel` did: the jobs it cancelled, and the others with their status."""

    id: str
    kind: str
    cancelled: list[str] = field(default_factory=list)
    #: Jobs left alone because they had already finished: id -> status.
    unchanged: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return asdict(self)


# -- re-render ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """One recorded value that differs between a job and its re-render."""

    field: str
    parent: Any
    child: Any

    def __str__(self) -> str:
        return f"{self.field}: {self.parent!r} -> {self.child!r}"


@dataclass(frozen=True)
class RerenderReport:
    """A re-render of a succeeded job and, once it finished, whether its frames matched."""

    parent_job_id: str
    job_id: str
    status: str
    parent_frames_sha256: str | None
    frames_sha256: str | None
    #: True/False once the re-render succeeded; None before (or when it failed).
    match: bool | None
    #: Environment, weights and effective-parameter differences between the two renders.
    differences: list[Difference] = field(default_factory=list)
    timed_out: bool = False
    #: Why the re-render failed (its error type and message), when it did.
    error: str | None = None

    @property
    def causes(self) -> list[str]:
        """The differences that can explain other frames, most telling first (:func:`explain`)."""
        return explain(self.differences)

    @property
    def finished(self) -> bool:
        """True when the re-render is in a terminal status."""
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict, with ``finished``."""
        out = asdict(self)
        out["finished"] = self.finished
        out["causes"] = self.causes
        return out


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key in sorted(value, key=str):
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def flat(value: Mapping[str, Any] | None, prefix: str) -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": leaf}``."""
    out: dict[str, Any] = {}
    _flatten(dict(value or {}), prefix, out)
    return out


def _changed(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Difference]:
    """One :class:`Difference` per key whose value differs between two flat records, sorted."""
    return [Difference(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def differences(parent: JobRecord, child: JobRecord) -> list[Difference]:
    """Every environment fingerprint, weights fingerprint and effective parameter that differs."""
    a = {**flat(parent.env_fingerprint, "env"), **flat(parent.effective_params, "effective_params")}
    b = {**flat(child.env_fingerprint, "env"), **flat(child.effective_params, "effective_params")}
    a["weights_fingerprint"] = parent.weights_fingerprint
    b["weights_fingerprint"] = child.weights_fingerprint
    return _changed(a, b)


#: How a difference between two renders' records can change the frames, most telling first:
#: (field prefix, what it is, why it matters).
_CAUSES: tuple[tuple[str, str, str], ...] = (
    ("effective_params.", "rendered parameters", "the two renders did not render the same thing"),
    ("weights_fingerprint", "weights", "other model weights"),
    ("env.torch_num_threads", "torch CPU threads",
     "frames depend on the CPU thread count; set FARM_TORCH_THREADS the same on every node"),
    ("env.device", "device", "CPU and GPU kernels give other floats"),
    ("env.gpu_names", "GPU model", "kernels differ between GPU models"),
    ("env.cuda", "CUDA build", "kernels differ between CUDA releases"),
    ("env.cudnn", "cuDNN build", "kernels differ between cuDNN releases"),
    ("env.torch", "torch build", "kernels differ between torch releases"),
    ("env.diffusers", "diffusers release", "the sampler or the expert switch step may differ"),
    ("env.transformers", "transformers release", "the text encoder may compute differently"),
    ("env.tokenizers", "tokenizers release", "the prompt may tokenize differently"),
    ("env.numpy", "numpy release", "frame post-processing may differ"),
    ("env.determinism.", "determinism flags", "non-deterministic kernels were allowed in one of them"),
    ("env.machine", "CPU architecture", "other CPU kernels"),
    ("env.python", "Python", "another interpreter"),
    ("env.ffmpeg", "ffmpeg build", "changes the MP4 bytes, not the frames"),
    ("env.imageio_ffmpeg", "imageio-ffmpeg", "changes the MP4 bytes, not the frames"),
    ("env.pillow", "Pillow", "changes the poster bytes, not the frames"),
)


def explain(diffs: Sequence[Difference]) -> list[str]:
    """Why two renders' frames may differ: one line per recorded cause, the most telling first.

    E.g. ``torch CPU threads: 1 -> 2 (frames depend on the CPU thread count; ...)``. Differences
    that cannot change frames or bytes (the platform string, the process environment) are left
    out; none left means the records do not explain the mismatch.
    """
    lines = []
    for prefix, what, why in _CAUSES:
        hits = [d for d in diffs if d.field == prefix or (prefix.endswith(".") and d.field.startswith(prefix))]
        if hits:
            changes = "; ".join(
                f"{d.parent!r} -> {d.child!r}" if len(hits) == 1 else f"{d.field.removeprefix(prefix)} "
                f"{d.parent!r} -> {d.child!r}" for d in hits
            )
            lines.append(f"{what}: {changes} ({why})")
    return lines


def env_differences(parent_env: Mapping[str, Any], child_env: Mapping[str, Any]) -> list[Difference]:
    """The differences between two environment fingerprints (fields named ``env.<key>``)."""
    return _changed(flat(parent_env, "env"), flat(child_env, "env"))


def rerender_report(parent: JobRecord, child: JobRecord, *, timed_out: bool = False) -> RerenderReport:
    """The report on ``child``, a re-render of ``parent``: the frames hashes, whether they match, what differs."""
    status = _status(child.status)
    match = None
    if status == "succeeded" and parent.frames_sha256 is not None:
        match = child.frames_sha256 == parent.frames_sha256
    diffs = differences(parent, child) if status == "succeeded" else []
    error = f"{child.error_type}: {child.error_message}" if child.error_type else None
    return RerenderReport(
        parent.id, child.id, status, parent.frames_sha256, child.frames_sha256, match, diffs, timed_out, error
    )


# -- audit -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEntry:
    """One missing or corrupt output: its job, its path, the expected and the actual hash."""

    job_id: str
    path: str | None
    expected: str | None
    actual: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class AuditReport:
    """Every succeeded job's stored file re-hashed against its recorded ``file_sha256``."""

    checked: int
    ok: list[str]
    missing: list[AuditEntry]
    corrupt: list[AuditEntry]

    @property
    def clean(self) -> bool:
        """True when no output is missing or corrupt."""
        return not self.missing and not self.corrupt

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict, with ``clean``."""
        out = asdict(self)
        out["clean"] = self.clean
        return out


# -- repair ------------------------------------------------------------------------------------

#: Verdicts of a repaired output.
MATCH, MISMATCH, FAILED, UNFINISHED = "MATCH", "MISMATCH", "FAILED", "UNFINISHED"


@dataclass(frozen=True)
class RepairItem:
    """One missing or corrupt output: what was done about it and the verdict."""

    uri: str
    #: What the audit found: ``missing`` or ``corrupt``.
    found: str
    #: Every succeeded job that points at the output (cache hits included).
    job_ids: list[str]
    #: The job that was re-rendered (the one that rendered the output).
    parent_job_id: str
    #: Where the bad directory was moved (None: there was nothing to move).
    quarantined_to: str | None
    rerender_job_id: str | None
    #: MATCH (same frames, file restored), MISMATCH (other frames), FAILED, UNFINISHED (timeout).
    verdict: str
    reason: str
    differences: list[str] = field(default_factory=list)
    #: The restored file has other bytes than recorded (same frames, another MP4 encoder build):
    #: the jobs' ``file_sha256`` was updated, with an event.
    file_rewritten: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The item as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class RepairReport:
    """``farm audit --repair``: the audit before, one item per bad output, the audit after."""

    before: AuditReport
    items: list[RepairItem]
    after: AuditReport | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """Every bad output came back with the same frames and the audit is clean now."""
        return all(i.verdict == MATCH for i in self.items) and (self.after is None or self.after.clean)

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict, with ``ok``."""
        return {"before": self.before.to_dict(), "items": [i.to_dict() for i in self.items],
                "after": None if self.after is None else self.after.to_dict(), "timed_out": self.timed_out,
                "ok": self.ok}
