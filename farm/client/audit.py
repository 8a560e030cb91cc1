"""Storage audit: every succeeded job's stored file re-hashed against its recorded ``file_sha256``.

Plain :mod:`hashlib` in chunks (no numpy, no torch: a producer runs this). A file shared by
several jobs (cache hits point at their original's output) is hashed once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from farm.client.reports import AuditEntry, AuditReport, output_path

if TYPE_CHECKING:
    from farm.ledger.records import JobRecord

#: Bytes read at a time while hashing.
HASH_CHUNK_BYTES = 1 << 20


def sha256_file(path: Path, *, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """sha256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_or_reason(path: Path) -> tuple[str | None, str]:
    try:
        return sha256_file(path), ""
    except FileNotFoundError:
        return None, "file not found"
    except IsADirectoryError:
        return None, "is a directory, not a file"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"


def audit_jobs(jobs: Iterable[JobRecord]) -> AuditReport:
    """Check each job's output file: ok, missing (no URI, no file, unreadable) or corrupt (its
    bytes hash to something else than recorded)."""
    ok: list[str] = []
    missing: list[AuditEntry] = []
    corrupt: list[AuditEntry] = []
    hashed: dict[str, tuple[str | None, str]] = {}
    checked = 0
    for job in jobs:
        checked += 1
        path = output_path(job.output_uri)
        if path is None:
            why = "no output recorded" if job.output_uri is None else f"not a local file URI: {job.output_uri}"
            missing.append(AuditEntry(job.id, None, job.file_sha256, None, why))
            continue
        if path not in hashed:
            hashed[path] = _hash_or_reason(Path(path))
        actual, reason = hashed[path]
        if actual is None:
            missing.append(AuditEntry(job.id, path, job.file_sha256, None, reason))
        elif actual != job.file_sha256:
            corrupt.append(AuditEntry(job.id, path, job.file_sha256, actual, "sha256 differs from the record"))
        else:
            ok.append(job.id)
    return AuditReport(checked, ok, missing, corrupt)
