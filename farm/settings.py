"""All of farm's settings, read from ``FARM_*`` environment variables.

This is the only module in farm that reads the environment. Everything else receives a
:class:`Settings` (or calls :func:`get_settings`).

With nothing configured, farm runs in *embedded* mode: an SQLite ledger file and an outputs
folder under one data directory, the built-in ``tiny`` model, no services needed.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from farm.kinds import OffloadPolicy

#: Where the data directory lives when neither FARM_DATA_DIR nor XDG_DATA_HOME is set.
DEFAULT_DATA_SUBDIR = "farm"
#: File name of the embedded SQLite ledger, inside the data directory.
EMBEDDED_LEDGER_FILENAME = "ledger.sqlite3"
#: Default model when a job names none: the built-in tiny model works on any machine.
DEFAULT_MODEL = "tiny"
#: Seconds a worker's claim on a job lasts without a heartbeat.
DEFAULT_LEASE_S = 120
#: Seconds between heartbeats while rendering (well under the lease).
DEFAULT_HEARTBEAT_S = 20
#: How many times a job may be attempted before it fails for good.
DEFAULT_MAX_ATTEMPTS = 3
#: Compatible jobs a worker renders together with expert-phase batching.
DEFAULT_PHASE_BATCH = 4
#: torch's CPU thread count for renders, the same on every node unless set (FARM_TORCH_THREADS).
#: Frames depend on it (a CPU conv3d sums in another order with more threads), so it is fixed,
#: not left at torch's default (the machine's core count), and recorded in every job's
#: environment fingerprint.
DEFAULT_TORCH_THREADS = 1
#: A worker whose row was not written for this many heartbeats (FARM_HEARTBEAT_S) is gone: it
#: serves nothing (routing reasons), counts for nothing in the farm's load (degradation), and its
#: name may be taken by a new process.
WORKER_STALE_HEARTBEATS = 3
#: Seconds Redis waits before redelivering an unacknowledged message. Must stay above the
#: longest render (A14B 720P: ~1,050 s on an H100); the ledger lease, not this, stops double renders.
DEFAULT_VISIBILITY_TIMEOUT_S = 7200
#: Seconds between two passes of the reaper (expired leases, jobs whose message was lost).
DEFAULT_REAP_INTERVAL_S = 30
#: A queued job whose message was sent this long ago and never claimed is enqueued again.
DEFAULT_REENQUEUE_AFTER_S = 7200
#: A queued job whose message was sent this long ago while its queue is empty lost its message
#: (its producer died between commit and send, or the broker lost it): the reaper sends it again.
DEFAULT_LOST_MESSAGE_GRACE_S = 60
#: Consecutive failed jobs after which a worker stops taking work (circuit breaker).
DEFAULT_CIRCUIT_BREAKER_FAILURES = 3
#: Transient-error retries inside one attempt: first delay, cap (seconds) and count.
DEFAULT_RETRY_BASE_S = 0.5
DEFAULT_RETRY_CAP_S = 30.0
DEFAULT_RETRY_COUNT = 6
#: Seconds a producer (submit, batch, the API) keeps trying to reach the broker before it reports
#: the jobs as recorded but not sent (the reaper sends them later).
DEFAULT_SEND_TIMEOUT_S = 3.0
#: Degradation under load (off unless set): seconds the oldest queued interactive job may wait
#: before workers render the jobs that allow it at their profile's ``draft`` settings
#: (FARM_DEGRADE_WAIT_S; 0: whenever an interactive job is waiting).
DEFAULT_DEGRADE_WAIT_S: float | None = None
#: Degradation under load (off unless set): the fraction, in (0, 1], of live workers busy at which
#: jobs that allow it render at their profile's ``draft`` settings (FARM_DEGRADE_BUSY_FRACTION).
DEFAULT_DEGRADE_BUSY_FRACTION: float | None = None
#: Seconds the HTTP API tries to reach the broker before it answers 202 "recorded, not sent yet"
#: (the reaper sends those jobs): a request answers within about this long plus the ledger write.
DEFAULT_API_SEND_TIMEOUT_S = 1.0
#: Seconds a review-room login (its signed session cookie) lasts: a working day.
DEFAULT_UI_SESSION_TTL_S = 12 * 3600
#: Seconds /readyz waits for each dependency (ledger, broker).
DEFAULT_READY_TIMEOUT_S = 1.0
#: Broker URL schemes farm works with (Celery on Redis; the embedded filesystem broker).
BROKER_SCHEMES: tuple[str, ...] = ("redis", "rediss", "sentinel", "filesystem")
#: Output store URL schemes (FARM_OUTPUT_URL): a directory (local or mounted), or an S3-compatible
#: object store (AWS S3, MinIO, Ceph, ...).
OUTPUT_SCHEMES: tuple[str, ...] = ("file", "s3")
#: Seconds a presigned download URL of an s3 output store stays valid (FARM_S3_PRESIGN_EXPIRY_S).
DEFAULT_S3_PRESIGN_EXPIRY_S = 900
#: The longest validity S3 signatures (SigV4) allow: seven days.
MAX_S3_PRESIGN_EXPIRY_S = 7 * 24 * 3600
#: Region signed into S3 requests when FARM_S3_REGION is unset (MinIO and Ceph accept any).
DEFAULT_S3_REGION = "us-east-1"
#: Secret settings that may come from a file instead: ``FARM_<NAME>_FILE`` names a file (a mounted
#: secret such as ``/run/secrets/broker_url``) whose content, stripped, is the value. Read only when
#: ``FARM_<NAME>`` itself is unset or blank, so a value given directly always wins.
FILE_SETTINGS: tuple[str, ...] = ("database_url", "broker_url", "api_token", "flower_basic_auth")
#: The largest secret file read (a URL or a token; anything bigger is a wrong path).
MAX_SECRET_FILE_BYTES = 64 * 1024
#: Flower keeps its state (workers, tasks) in this file in the data dir unless FARM_FLOWER_DB is set.
DEFAULT_FLOWER_DB_FILENAME = "flower.db"
#: Seconds after which Flower forgets a worker that went offline (FARM_FLOWER_PURGE_OFFLINE_S; 0: never).
DEFAULT_FLOWER_PURGE_OFFLINE_S = 24 * 3600


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / DEFAULT_DATA_SUBDIR


class Settings(BaseSettings):
    """farm's configuration. Every field is read from ``FARM_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FARM_", extra="ignore", frozen=True, hide_input_in_errors=True)

    data_dir: Path = Field(default_factory=_default_data_dir, description="Root of embedded-mode state.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the ledger; default: SQLite file in the data dir."
    )
    broker_url: str | None = Field(default=None, description="Celery broker URL (redis://...).")
    database_url_file: Path | None = Field(
        default=None, description="File holding FARM_DATABASE_URL (a mounted secret); read when that is unset.")
    broker_url_file: Path | None = Field(
        default=None, description="File holding FARM_BROKER_URL (a mounted secret); read when that is unset.")
    output_dir: Path | None = Field(
        default=None, description="Content-addressed outputs (file store); local staging with an s3 store.")
    # -- the output store: file:// (default) or s3:// (credentials: never logged, never in code) ----
    output_url: str | None = Field(
        default=None, description="Output store: file:///dir or s3://bucket/prefix; default: FARM_OUTPUT_DIR.")
    s3_endpoint_url: str | None = Field(default=None, description="S3 API endpoint (MinIO, Ceph); default: AWS.")
    s3_public_endpoint_url: str | None = Field(
        default=None, description="Endpoint clients reach, signed into download URLs; default: s3_endpoint_url.")
    s3_region: str = Field(default=DEFAULT_S3_REGION)
    s3_access_key_id: str | None = Field(
        default=None, description="S3 access key; default: the standard AWS chain (AWS_* variables, instance role).")
    s3_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret key (never logged).")
    s3_presign_expiry_s: int = Field(default=DEFAULT_S3_PRESIGN_EXPIRY_S, ge=1, le=MAX_S3_PRESIGN_EXPIRY_S)
    model_dir: Path | None = Field(
        default=None, description="Local Diffusers-format model directories; default data_dir/models."
    )
    default_model: str = Field(default=DEFAULT_MODEL)
    device: str = Field(default="cpu", description="Torch device for in-process renders (cpu, cuda:0, ...).")
    offload: OffloadPolicy = Field(default=OffloadPolicy.NONE)
    phase_batch: int = Field(default=DEFAULT_PHASE_BATCH, ge=1, le=64)
    lease_s: int = Field(default=DEFAULT_LEASE_S, ge=5)
    heartbeat_s: int = Field(default=DEFAULT_HEARTBEAT_S, ge=1)
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=100)
    torch_threads: int = Field(
        default=DEFAULT_TORCH_THREADS, ge=1,
        description="torch.set_num_threads for renders: frames depend on it, keep it the same on every node.",
    )
    # -- the farm (Celery on Redis) ---------------------------------------------------------------
    visibility_timeout_s: int = Field(default=DEFAULT_VISIBILITY_TIMEOUT_S, ge=1)
    reap_interval_s: float = Field(default=DEFAULT_REAP_INTERVAL_S, gt=0)
    reenqueue_after_s: float = Field(default=DEFAULT_REENQUEUE_AFTER_S, gt=0)
    lost_message_grace_s: float = Field(default=DEFAULT_LOST_MESSAGE_GRACE_S, gt=0)
    circuit_breaker_failures: int = Field(default=DEFAULT_CIRCUIT_BREAKER_FAILURES, ge=1)
    retry_base_s: float = Field(default=DEFAULT_RETRY_BASE_S, ge=0)
    retry_cap_s: float = Field(default=DEFAULT_RETRY_CAP_S, ge=0)
    retry_count: int = Field(default=DEFAULT_RETRY_COUNT, ge=0)
    send_timeout_s: float = Field(
        default=DEFAULT_SEND_TIMEOUT_S, gt=0, le=3600,
        description="Seconds a producer tries to reach the broker before reporting jobs as not sent.",
    )
    degrade_wait_s: float | None = Field(
        default=DEFAULT_DEGRADE_WAIT_S, ge=0,
        description="Oldest interactive wait (s) above which jobs with allow_degrade render at draft settings.",
    )
    degrade_busy_fraction: float | None = Field(
        default=DEFAULT_DEGRADE_BUSY_FRACTION, gt=0, le=1,
        description="Busy fraction of live workers at which jobs with allow_degrade render at draft settings.",
    )
    api_send_timeout_s: float = Field(
        default=DEFAULT_API_SEND_TIMEOUT_S, gt=0, le=60,
        description="Seconds the HTTP API tries the broker before answering 202 with the jobs recorded, not sent.",
    )
    worker_models: str | None = Field(
        default=None, description="Models a worker serves, comma-separated (default: every model whose weights "
        "are present); it consumes only their queues.",
    )
    worker_tags: str | None = Field(default=None, description="Tags a worker declares, comma-separated (h200,...).")
    worker_metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Prometheus port of a worker (GPU N listens on port + N)."
    )
    worker_metrics_host: str = Field(default="127.0.0.1", description="Address the worker metrics bind to.")
    # -- HTTP API and Flower (secrets: never logged, never in code) -------------------------------
    api_token: SecretStr | None = Field(default=None, description="Bearer token the HTTP API requires.")
    api_token_file: Path | None = Field(
        default=None, description="File holding FARM_API_TOKEN (a mounted secret); read when that is unset.")
    api_host: str = Field(default="127.0.0.1")
    api_port: int = Field(default=8400, ge=1, le=65535)
    ui_session_ttl_s: int = Field(
        default=DEFAULT_UI_SESSION_TTL_S, ge=60, le=7 * 86400,
        description="Seconds a review-room (/ui) login lasts before the form asks for the token again.")
    ui_cookie_secure: bool = Field(
        default=False, description="Mark the /ui session cookie Secure even when the API itself serves plain http "
        "(behind a TLS-terminating proxy); it always is over https.")
    flower_basic_auth: SecretStr | None = Field(default=None, description="user:password for Flower.")
    flower_basic_auth_file: Path | None = Field(
        default=None, description="File holding FARM_FLOWER_BASIC_AUTH (a mounted secret); read when that is unset.")
    flower_port: int = Field(default=5555, ge=1, le=65535)
    flower_db: Path | None = Field(
        default=None, description="Flower's state file (workers, tasks), kept across restarts; default "
        "data_dir/flower.db.")
    flower_purge_offline_s: int = Field(
        default=DEFAULT_FLOWER_PURGE_OFFLINE_S, ge=0,
        description="Seconds after which Flower drops a worker that went offline (0: never).")
    #: Test-only fault injection (jobs tagged ``fault: crash|sleep|fail``). Never on in production.
    fault_injection: bool = Field(default=False)
    log_level: str = Field(default="INFO")
    sql_echo: bool = Field(default=False)

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """``FARM_<NAME>_FILE`` of each :data:`FILE_SETTINGS` entry, when ``FARM_<NAME>`` is unset or blank."""
        if not isinstance(data, dict):
            return data
        values = dict(data)
        for name in FILE_SETTINGS:
            path = values.get(f"{name}_file")
            given = values.get(name)
            if path in (None, "") or (given is not None and str(given).strip()):
                continue
            values[name] = read_secret_file(f"FARM_{name.upper()}_FILE", Path(str(path)))
        return values

    @field_validator("database_url", "broker_url", "output_url", "s3_endpoint_url", "s3_public_endpoint_url",
                     "s3_access_key_id")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("output_url")
    @classmethod
    def _known_output_store(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme.lower() not in OUTPUT_SCHEMES or "://" not in value:
            raise ValueError(f"FARM_OUTPUT_URL must start with one of {', '.join(s + '://' for s in OUTPUT_SCHEMES)}"
                             f" (got {redacted_url(value)!r})")
        if parts.username or parts.password:
            raise ValueError("FARM_OUTPUT_URL holds no credentials: set FARM_S3_ACCESS_KEY_ID and "
                             "FARM_S3_SECRET_ACCESS_KEY")
        if parts.scheme.lower() == "s3" and not parts.netloc:
            raise ValueError(f"FARM_OUTPUT_URL must name a bucket: s3://BUCKET/PREFIX (got {value!r})")
        if parts.scheme.lower() == "file" and (parts.netloc not in ("", "localhost") or not parts.path):
            raise ValueError(f"FARM_OUTPUT_URL must be a local directory: file:///PATH (got {value!r})")
        return value

    @field_validator("degrade_wait_s", "degrade_busy_fraction", mode="before")
    @classmethod
    def _blank_number_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, _ = value.partition("://")
        if not sep or scheme.lower() not in BROKER_SCHEMES:
            raise ValueError(
                f"FARM_BROKER_URL must start with one of {', '.join(s + '://' for s in BROKER_SCHEMES)} "
                f"(got {redacted_url(value)!r})")
        return value

    # -- derived values -------------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        """True when no ledger database is configured (SQLite file in the data dir)."""
        return self.database_url is None

    @property
    def ledger_url(self) -> str:
        """FARM_DATABASE_URL, else the embedded SQLite ledger in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / EMBEDDED_LEDGER_FILENAME}"

    @property
    def broker(self) -> str:
        """The Celery broker.

        FARM_BROKER_URL, else a local filesystem broker in the data dir (embedded mode: no
        services).
        """
        return self.broker_url or "filesystem://"

    @property
    def broker_path(self) -> Path:
        """Folder of the embedded filesystem broker."""
        return self.data_dir / "broker"

    @property
    def output_store_url(self) -> str:
        """The output store: FARM_OUTPUT_URL, else the ``file://`` URL of :attr:`outputs_path`."""
        return self.output_url or self.outputs_path.absolute().as_uri()

    @property
    def output_store_kind(self) -> str:
        """``file`` or ``s3``: which backend :attr:`output_store_url` names."""
        return urlsplit(self.output_store_url).scheme.lower()

    @property
    def outputs_path(self) -> Path:
        """The local outputs directory.

        The file store's root (FARM_OUTPUT_URL's path, else FARM_OUTPUT_DIR, else ``outputs`` in
        the data dir). With an s3 store, the local staging directory renders are encoded into
        before their upload (FARM_OUTPUT_DIR, else ``staging`` in the data dir).
        """
        if self.output_url is not None:
            parts = urlsplit(self.output_url)
            if parts.scheme.lower() == "file":
                return Path(unquote(parts.path))
            return self.output_dir if self.output_dir is not None else self.data_dir / "staging"
        return self.output_dir if self.output_dir is not None else self.data_dir / "outputs"

    @property
    def worker_stale_s(self) -> float:
        """Seconds after which a silent worker counts as gone (:data:`WORKER_STALE_HEARTBEATS` heartbeats)."""
        return float(WORKER_STALE_HEARTBEATS * self.heartbeat_s)

    @property
    def flower_db_path(self) -> Path:
        """FARM_FLOWER_DB, else ``flower.db`` in the data dir."""
        return self.flower_db if self.flower_db is not None else self.data_dir / DEFAULT_FLOWER_DB_FILENAME

    @property
    def models_path(self) -> Path:
        """FARM_MODEL_DIR, else ``models`` in the data dir."""
        return self.model_dir if self.model_dir is not None else self.data_dir / "models"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def reset_settings_cache() -> None:
    """Forget the cached settings (tests that change the environment call this)."""
    get_settings.cache_clear()


def read_secret_file(setting: str, path: Path) -> str:
    """The secret held in ``path`` (surrounding whitespace, e.g. the final newline, stripped).

    A missing, unreadable, empty or oversized file is a ``ValueError`` naming ``setting`` and the
    path, never the content.
    """
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"{setting}: {path} is larger than {MAX_SECRET_FILE_BYTES} bytes: not a secret file")
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{setting}: {path} is not UTF-8 text") from None
    if not value:
        raise ValueError(f"{setting}: {path} is empty")
    return value


def redacted_url(url: str) -> str:
    """A URL with its password replaced, safe to print or log."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (e.g. a broker URL)
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return urlunsplit(parts._replace(netloc=netloc))
        return url


def process_environment() -> dict[str, str]:
    """The few non-FARM variables the environment fingerprint records (never secrets)."""
    keys = ("CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "OMP_NUM_THREADS")
    return {k: os.environ[k] for k in keys if k in os.environ}


def set_process_environment(key: str, value: str) -> None:
    """Set a process environment variable that must be in place before a library initialises.

    ``CUDA_VISIBLE_DEVICES`` before torch, ``CUBLAS_WORKSPACE_CONFIG`` before CUDA.
    """
    os.environ[key] = value
