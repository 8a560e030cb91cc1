"""The client's read operations.

Jobs, batches, events, workers and output files, as the ledger and the output store have them.
:class:`farm.client.Client` inherits them; the HTTP API and the CLI read through them and never
touch the ledger themselves.

Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from farm.client.library import normalize_label
from farm.errors import InvalidInput, OutputMissing, OutputNotReady
from farm.ledger.status import JobStatus, parse_status
from farm.spec import MAX_PROMPT_CHARS, MAX_TAG_KEY_CHARS, MAX_TAG_VALUE_CHARS, TAG_KEY_PATTERN, has_control_chars

if TYPE_CHECKING:
    from farm.ledger import Ledger
    from farm.ledger.records import BatchRecord, EventRecord, JobRecord, WorkerRecord
    from farm.store import StoreBackend

#: Most jobs one list call returns.
MAX_LIST_LIMIT = 10_000
#: Download kinds: the media type and the extension of the file served.
DOWNLOADS: dict[str, tuple[str, str]] = {"video": ("video/mp4", "mp4"), "poster": ("image/png", "png")}


def check_id(value: object, field: str = "id") -> str:
    """A job or batch id: a UUID in its text form."""
    import uuid

    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise InvalidInput.one(field, "uuid", f"must be a job or batch id (a UUID), got {value!r}")


def check_page(limit: object, offset: object, max_limit: int) -> None:
    """A page of a list: ``limit`` in [1, max_limit], ``offset`` >= 0 (:class:`InvalidInput` naming which)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_limit:
        raise InvalidInput.one("limit", "range", f"must be an integer in [1, {max_limit}], got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidInput.one("offset", "non_negative", f"must be an integer >= 0, got {offset!r}")


def parse_tag_filter(value: object) -> tuple[str, str | None]:
    """A tag filter: ``"key=value"`` -> ``(key, value)``, ``"key"`` -> ``(key, None)``.

    The key follows the spec's tag key rule (1-MAX_TAG_KEY_CHARS characters of A-Z a-z 0-9 _ . : / -), the
    value the tag value rule (at most MAX_TAG_VALUE_CHARS characters, no control characters);
    else :class:`InvalidInput` on field ``tag``, rule ``tag_filter``.
    """
    if not isinstance(value, str):
        raise InvalidInput.one("tag", "type", f"must be text, got {type(value).__name__}")
    key, sep, tag_value = value.partition("=")
    if not (0 < len(key) <= MAX_TAG_KEY_CHARS and re.match(TAG_KEY_PATTERN, key)):
        raise InvalidInput.one("tag", "tag_filter", f"is KEY or KEY=VALUE; a key is 1-{MAX_TAG_KEY_CHARS} "
                               f"characters of A-Z a-z 0-9 _ . : / -, got {key[:70]!r}")
    if len(tag_value) > MAX_TAG_VALUE_CHARS or has_control_chars(tag_value):
        raise InvalidInput.one("tag", "tag_filter", f"a tag value is at most {MAX_TAG_VALUE_CHARS} characters, "
                               "no control characters")
    return key, tag_value if sep else None


def check_prompt_filter(value: object) -> str:
    """A prompt filter: 1 to MAX_PROMPT_CHARS characters, no control characters but tab, newline and CR.

    (:class:`InvalidInput` on field ``prompt``; a prompt never holds one, and Postgres refuses NUL.)
    """
    if not isinstance(value, str):
        raise InvalidInput.one("prompt", "type", f"must be text, got {type(value).__name__}")
    if not 0 < len(value) <= MAX_PROMPT_CHARS:
        raise InvalidInput.one("prompt", "length", f"must be 1-{MAX_PROMPT_CHARS} characters, got {len(value)}")
    if has_control_chars(value):
        raise InvalidInput.one("prompt", "no_control_chars", "must not contain NUL or other control characters")
    return value


@dataclass(frozen=True)
class Download:
    """A job's file to serve, its media type and a download name.

    ``path``: a file inside the (file) output store, to stream; ``url``: a presigned URL of the
    (s3) output store, to redirect to. Exactly one is set.
    """

    path: Path | None
    media_type: str
    filename: str
    url: str | None = None


@dataclass(frozen=True)
class BatchView:
    """A batch and how many of its jobs are in each status."""

    batch: BatchRecord
    counts: dict[str, int]

    @property
    def finished(self) -> int:
        """How many of its jobs are in a terminal status (succeeded, failed, cancelled)."""
        return sum(n for s, n in self.counts.items() if JobStatus(s).terminal)

    @property
    def done(self) -> bool:
        """True when every job of the batch is in a terminal status."""
        return self.finished >= self.batch.job_count


class ReadOps:
    """Reading what the farm recorded (mixed into :class:`farm.client.Client`)."""

    ledger: Ledger
    store: StoreBackend

    def get_job(self, job_id: str) -> JobRecord:
        """Every recorded field of one job (:class:`~farm.errors.JobNotFound` if unknown)."""
        return self.ledger.get_job(check_id(job_id, "job_id"))

    def get_batch(self, batch_id: str) -> BatchRecord:
        """The batch ``batch_id``; :class:`~farm.errors.BatchNotFound` when there is none."""
        return self.ledger.get_batch(check_id(batch_id, "batch_id"))

    def batch_view(self, batch_id: str) -> BatchView:
        """The batch ``batch_id`` with its job counts per status."""
        batch = self.get_batch(batch_id)
        return BatchView(batch, {s.value: n for s, n in self.ledger.batch_counts(batch.id).items()})

    def list_jobs(self, *, batch_id: str | None = None, status: str | None = None, starred: bool | None = None,
                  tag: str | None = None, label: str | None = None, prompt: str | None = None,
                  limit: int = 100, offset: int = 0) -> list[JobRecord]:
        """Jobs, newest first, filtered by every filter given.

        ``batch_id`` (of one batch), ``status`` (in one status), ``starred`` (only starred /
        only unstarred), ``tag`` (``"key=value"``: the spec tag ``key`` is ``value``; ``"key"``:
        the job has that tag), ``label`` (carries this review label), ``prompt`` (the prompt
        contains this text, ignoring case). :class:`~farm.errors.InvalidInput` names a bad one.
        """
        check_page(limit, offset, MAX_LIST_LIMIT)
        checked_status = None
        if status is not None:
            try:
                checked_status = parse_status(status)
            except ValueError as exc:
                raise InvalidInput.one("status", "known_status", str(exc)) from None
        batch = None if batch_id is None else check_id(batch_id, "batch_id")
        return self.ledger.list_jobs(
            batch_id=batch, status=checked_status, starred=starred, limit=limit, offset=offset,
            tag=None if tag is None else parse_tag_filter(tag),
            label=None if label is None else normalize_label(label, "label"),
            prompt=None if prompt is None else check_prompt_filter(prompt),
        )

    def list_batches(self, *, limit: int = 100, offset: int = 0) -> list[BatchView]:
        """Batches, newest first, each with its job counts per status."""
        check_page(limit, offset, MAX_LIST_LIMIT)
        return [BatchView(batch, {s.value: n for s, n in counts.items()})
                for batch, counts in self.ledger.list_batches(limit=limit, offset=offset)]

    def events(self, job_id: str) -> list[EventRecord]:
        """The job's event trail, oldest first."""
        return self.ledger.events(check_id(job_id, "job_id"))

    def workers(self) -> list[WorkerRecord]:
        """Every worker the ledger has seen (state, device, counters, last seen)."""
        return self.ledger.list_workers()

    def download(self, job_id: str, kind: str) -> Download:
        """A succeeded job's video or poster, located by the output store (never a path from the caller).

        A file to stream (file store), or a presigned URL to redirect to (s3 store).

        :class:`~farm.errors.OutputNotReady` before it succeeded,
        :class:`~farm.errors.OutputMissing` when its file is gone.
        """
        if kind not in DOWNLOADS:
            raise InvalidInput.one("kind", "known_kind", f"must be one of {', '.join(DOWNLOADS)}, got {kind!r}")
        job = self.get_job(job_id)
        if job.status is not JobStatus.SUCCEEDED or not job.output_uri:
            raise OutputNotReady(f"job {job.id} is {job.status.value}: it has no {kind} yet")
        served = self.store.serve(job.output_uri, poster=kind == "poster")
        if served is None:
            raise OutputMissing(f"job {job.id}'s {kind} file is missing from the output store")
        media, ext = DOWNLOADS[kind]
        return Download(served.path, media, f"{job.id}.{ext}", served.url)
