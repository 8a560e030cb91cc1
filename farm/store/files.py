"""File primitives of the output store: hashing, atomic writes and fsyncs.

The one place farm hashes a file (:func:`file_sha256`, ``hashlib.file_digest``). Standard library
only: producers (audit, cache checks) import it without numpy or torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path

#: Temporary directories and files start with this (``OutputStore.clean_temp`` removes stale ones).
TEMP_PREFIX = ".tmp-"


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fsync_file(path: Path) -> None:
    """Flush the file at ``path`` to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush the directory at ``path`` to disk (best effort: skipped where it cannot be opened or synced)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically.

    A temporary file in the same directory, fsync, ``os.replace``, fsync of the directory. A
    reader sees the old file or the new one.
    """
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_new_file(path: Path, data: bytes) -> None:
    """Write and fsync a new file (inside a temporary directory that is renamed as a whole)."""
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
