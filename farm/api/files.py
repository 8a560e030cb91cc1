"""Which file a download serves: always the job's *recorded* output, never a path from the request.

``GET /v1/jobs/{id}/video`` and ``/poster`` look the job up by id (a UUID: anything else names no
job), take its recorded ``output_uri`` and serve that file — or the poster next to it — only if it
resolves (symlinks followed) to a file inside ``FARM_OUTPUT_DIR``. The request contributes the job
id and nothing else to the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from farm.ledger import JobRecord, JobStatus

#: Download kinds: the file name inside a job's output directory, its media type and extension.
VIDEO = "video"
POSTER = "poster"
KINDS: dict[str, tuple[str | None, str, str]] = {
    VIDEO: (None, "video/mp4", "mp4"),  # the recorded output itself
    POSTER: ("poster.png", "image/png", "png"),  # the poster stored next to it
}
FILE_SCHEME = "file://"


class NotReady(Exception):
    """The job has no output to serve (it has not succeeded): HTTP 404."""


class OutputMissing(Exception):
    """The job succeeded but its file is gone or lies outside the output directory: HTTP 409."""


@dataclass(frozen=True)
class Download:
    path: Path
    media_type: str
    filename: str


def resolve_download(job: JobRecord, kind: str, outputs_root: Path) -> Download:
    """The file to serve for ``kind`` of ``job`` (see the module docstring)."""
    name, media, ext = KINDS[kind]
    if job.status is not JobStatus.SUCCEEDED or not job.output_uri:
        raise NotReady(f"job {job.id} is {job.status.value}: it has no {kind} yet")
    if not job.output_uri.startswith(FILE_SCHEME):
        raise OutputMissing(f"job {job.id}'s output is not a local file")
    recorded = Path(job.output_uri.removeprefix(FILE_SCHEME))
    target = recorded if name is None else recorded.with_name(name)
    root = outputs_root.resolve()
    try:
        real = target.resolve(strict=True)
    except (OSError, RuntimeError):
        raise OutputMissing(f"job {job.id}'s {kind} file is missing from the output store") from None
    if not real.is_relative_to(root) or not real.is_file():
        raise OutputMissing(f"job {job.id}'s {kind} file is not in the output store")
    return Download(real, media, f"{job.id}.{ext}")
