"""The ledger's tables (SQLAlchemy Core).

``batches``, ``jobs``, the append-only ``events``, the farm's ``models`` (weights fingerprints,
for cache hits) and ``workers`` (liveness), and ``outputs`` (each stored file's integrity state:
what the cache may answer from).

This metadata is what Alembic compares the migrated database against (``farm db check`` and the
migration tests): a change here needs a migration in ``migrations/versions``.

Statuses and priorities are plain strings guarded by CHECK constraints, so SQLite and Postgres
store and validate them the same way. Times are timezone-aware UTC (:class:`UTCDateTime`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
)

from farm.ledger.status import OUTPUT_STATES, PRIORITIES, WORKER_STATES, JobStatus
from farm.ledger.types import UTCDateTime, json_doc

#: Constraint names are derived from these templates, identically in the models and migrations.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

#: Column sizes (characters).
ID_CHARS = 36  # a UUID in its canonical text form
SHA256_HEX_CHARS = 64
STATUS_CHARS = 16
NAME_CHARS = 255
#: ``farm.spec.compat_digest``: a 32-hex-digit digest.
COMPAT_KEY_CHARS = 32
MODEL_NAME_CHARS = 64
FINGERPRINT_CHARS = 128
DEVICE_CHARS = 64


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


STATUS_VALUES: tuple[str, ...] = tuple(s.value for s in JobStatus)

batches = Table(
    "batches",
    metadata,
    Column("id", String(ID_CHARS), primary_key=True),
    Column("manifest_digest", String(SHA256_HEX_CHARS), nullable=False, unique=True),
    Column("name", String(NAME_CHARS), nullable=False),
    #: The manifest's file name only (never a path, never built from prompt text).
    Column("source_name", String(NAME_CHARS), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("job_count", Integer, nullable=False),
    #: The highest ``batch_index`` whose message (and every earlier one) was confirmed published;
    #: -1: none yet. The jobs after it may still need their message (see ``Ledger.confirm_sent``).
    Column("sent_through", Integer, nullable=False, server_default=text("-1")),
    CheckConstraint("job_count >= 0", name="job_count_non_negative"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(ID_CHARS), primary_key=True),
    #: sha256 of the canonical render parameters; not unique (re-renders, --no-cache duplicates).
    Column("job_key", String(SHA256_HEX_CHARS), nullable=False, index=True),
    Column("batch_id", String(ID_CHARS), ForeignKey("batches.id"), nullable=True, index=True),
    Column("status", String(STATUS_CHARS), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("negative_prompt", Text, nullable=True),
    Column("seed", BigInteger, nullable=False),
    Column("seed_strategy", String(STATUS_CHARS), nullable=False),
    #: The full canonical spec (``RenderSpec.canonical()``).
    Column("params", json_doc(), nullable=False),
    #: What the user asked for (unset fields left out).
    Column("requested_params", json_doc(), nullable=False),
    #: What actually rendered (e.g. after degradation); set on success.
    Column("effective_params", json_doc(), nullable=True),
    Column("model_name", String(MODEL_NAME_CHARS), nullable=False),
    Column("weights_fingerprint", String(FINGERPRINT_CHARS), nullable=True),
    Column("priority", String(STATUS_CHARS), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False),
    Column("worker_host", String(NAME_CHARS), nullable=True),
    Column("worker_device", String(DEVICE_CHARS), nullable=True),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    Column("heartbeat_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    #: e.g. load_s, render_s, encode_s, swaps, transfer bytes.
    Column("timings", json_doc(), nullable=True),
    Column("output_uri", Text, nullable=True),
    Column("file_sha256", String(SHA256_HEX_CHARS), nullable=True),
    Column("frames_sha256", String(SHA256_HEX_CHARS), nullable=True),
    #: python/torch/diffusers/transformers/CUDA versions, GPU name.
    Column("env_fingerprint", json_doc(), nullable=True),
    Column("error_type", String(128), nullable=True),
    Column("error_message", Text, nullable=True),
    #: The job this one re-renders.
    Column("parent_job_id", String(ID_CHARS), ForeignKey("jobs.id"), nullable=True),
    #: The job whose output answered this one (cache hit: queued -> succeeded without a render).
    Column("cache_of_job_id", String(ID_CHARS), ForeignKey("jobs.id"), nullable=True),
    Column("tags", json_doc(), nullable=False),
    Column("starred", Boolean(create_constraint=False), nullable=False, server_default=false()),
    #: Review labels (the seed library's tags): a sorted JSON list of distinct lowercase labels.
    Column("labels", json_doc(), nullable=False, server_default=text("'[]'")),
    Column("progress", Float, nullable=False, server_default=text("0")),
    #: Position in the manifest expansion (batch jobs only).
    Column("batch_index", Integer, nullable=True),
    #: ``farm.spec.compat_digest(params)``: jobs with equal keys can be phase-batched together.
    Column("compat_key", String(COMPAT_KEY_CHARS), nullable=False),
    #: When the job's wake-up message was last sent (NULL: not sent since it became queued).
    Column("enqueued_at", UTCDateTime(), nullable=True),
    #: Never answered from another job's output (no cache hit, never a follower).
    Column("no_cache", Boolean(create_constraint=False), nullable=False, server_default=false()),
    #: May render at the profile's degraded settings when the farm is under load.
    Column("allow_degrade", Boolean(create_constraint=False), nullable=False, server_default=false()),
    #: Why the job rendered degraded (NULL: as asked); degraded outputs never answer the cache.
    Column("degraded_reason", Text, nullable=True),
    CheckConstraint(_in_list("status", STATUS_VALUES), name="status"),
    CheckConstraint(_in_list("priority", PRIORITIES), name="priority"),
    CheckConstraint("progress >= 0 AND progress <= 1", name="progress_range"),
    CheckConstraint("attempts >= 0", name="attempts_non_negative"),
    CheckConstraint("max_attempts >= 1", name="max_attempts_positive"),
    CheckConstraint("seed >= 0", name="seed_non_negative"),
    Index("ix_jobs_status_priority_created_at", "status", "priority", "created_at"),
    Index("ix_jobs_job_key_status", "job_key", "status"),
    Index("ix_jobs_status_compat_key", "status", "compat_key"),
    Index("ix_jobs_cache_of_job_id", "cache_of_job_id"),
)

events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job_id", String(ID_CHARS), ForeignKey("jobs.id"), nullable=False, index=True),
    Column("at", UTCDateTime(), nullable=False),
    #: NULL for the "created" event.
    Column("from_status", String(STATUS_CHARS), nullable=True),
    Column("to_status", String(STATUS_CHARS), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("worker", String(NAME_CHARS), nullable=True),
    Column("detail", json_doc(), nullable=True),
    CheckConstraint(_in_list("to_status", STATUS_VALUES), name="to_status"),
    CheckConstraint(f"from_status IS NULL OR {_in_list('from_status', STATUS_VALUES)}", name="from_status"),
)

#: The weights fingerprint each model was last loaded with (a job's output is reused only when
#: it was rendered with the same weights).
models = Table(
    "models",
    metadata,
    Column("name", String(MODEL_NAME_CHARS), primary_key=True),
    Column("weights_fingerprint", String(FINGERPRINT_CHARS), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    #: The worker that registered it.
    Column("worker", String(NAME_CHARS), nullable=True),
)

WORKER_STATE_CHARS = 16

#: One row per worker process (by its Celery hostname), upserted as it runs.
workers = Table(
    "workers",
    metadata,
    Column("name", String(NAME_CHARS), primary_key=True),
    Column("host", String(NAME_CHARS), nullable=False),
    Column("device", String(DEVICE_CHARS), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("state", String(WORKER_STATE_CHARS), nullable=False),
    Column("consecutive_failures", Integer, nullable=False, server_default=text("0")),
    Column("jobs_succeeded", Integer, nullable=False, server_default=text("0")),
    Column("jobs_failed", Integer, nullable=False, server_default=text("0")),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("detail", json_doc(), nullable=True),
    #: Models whose weights the worker verified at start (the queues it consumes), and its tags.
    Column("models", json_doc(), nullable=True),
    Column("tags", json_doc(), nullable=True),
    CheckConstraint(_in_list("state", WORKER_STATES), name="state"),
    CheckConstraint(
        "consecutive_failures >= 0 AND jobs_succeeded >= 0 AND jobs_failed >= 0", name="counters_non_negative"
    ),
)

#: One row per stored output file (jobs point at it by ``output_uri``; cache hits share their
#: original's). ``state`` says whether the cache may answer from it: a writer records ``ok``, a
#: check (``farm audit``, a worker about to answer a cache hit) records what it found.
outputs = Table(
    "outputs",
    metadata,
    Column("uri", Text, primary_key=True),
    #: The file's sha256 as last written (a repair may write new bytes for the same frames).
    Column("file_sha256", String(SHA256_HEX_CHARS), nullable=False),
    Column("frames_sha256", String(SHA256_HEX_CHARS), nullable=True),
    #: NULL when unknown (outputs recorded before this table existed): the next check hashes it.
    Column("size_bytes", BigInteger, nullable=True),
    Column("state", String(STATUS_CHARS), nullable=False),
    #: When the file's bytes were last seen to match (written, or hashed by a check).
    Column("verified_at", UTCDateTime(), nullable=True),
    Column("checked_at", UTCDateTime(), nullable=False),
    #: Why the last check found it missing or corrupt.
    Column("detail", json_doc(), nullable=True),
    CheckConstraint(_in_list("state", OUTPUT_STATES), name="state"),
    CheckConstraint("size_bytes IS NULL OR size_bytes >= 0", name="size_non_negative"),
)
