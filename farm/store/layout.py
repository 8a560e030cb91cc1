"""The content-addressed output store: where a render's files live, their URIs, and their checks.

Layout (every path component comes from hashes, never from prompt text)::

    <root>/<id[:2]>/<id>/video.mp4
                        poster.png
                        frames/00000.png ...      (output_format "mp4+frames" only)
                        output.json               (sidecar: hashes and parameters, no prompt)
    <root>/.quarantine/<id>.<utc time>.<random>/  (bad directories moved aside, never deleted)

where ``id`` (:func:`output_id_of`) is sha256 over the frames hash, the fps, the output format and
the encoding profile: everything that decides the directory's content. A directory is written
under a temporary name in the same parent, fsynced, and renamed into place, so it is complete or
absent; two writers of the same frames race harmlessly (the first rename wins; the other checks
the winner and returns it). A writer that finds the directory damaged (unreadable sidecar, another
output's sidecar, a video whose bytes do not match) moves it to the quarantine and writes it anew:
it holds the very frames the directory must contain.

A job records its video's URI (``file:///<root>/<id[:2]>/<id>/video.mp4``). The store maps a URI
back to a path by its last three components only (:meth:`OutputStore.locate`), so nodes that mount
the same store at different paths agree on every output.

This is the *file* backend of the output store; :mod:`farm.store.s3` is the object-store backend
with the same layout and API (:class:`farm.store.backend.StoreBackend`).

Standard library only: producers (audit, cache-hit checks, downloads) use this module without
numpy. Writing is :class:`farm.store.writer.OutputWriter`'s (workers and ``farm render``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path, PurePath
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from farm.errors import OutputMissing, OutputRefused, StorageError
from farm.kinds import OutputFormat, values
from farm.store.files import TEMP_PREFIX, file_sha256, fsync_dir

log = logging.getLogger(__name__)

#: Version of the encoding profile (ffmpeg arguments, poster choice, PNG options, sidecar layout).
#: Part of every ``output_id``: bump it whenever any of those change.
ENCODE_PROFILE = "farm.h264-crf18-medium-bt709/1"
#: File names inside one output directory.
VIDEO_FILENAME = "video.mp4"
POSTER_FILENAME = "poster.png"
FRAMES_DIRNAME = "frames"
SIDECAR_FILENAME = "output.json"
SIDECAR_FORMAT = "farm.output/1"
#: Folder (under the root) where damaged output directories are moved.
QUARANTINE_DIRNAME = ".quarantine"
#: Temporary entries older than this are left by a dead writer (``clean_temp``'s default).
STALE_TEMP_S = 3600.0
FILE_SCHEME = "file"

OUTPUT_FORMATS: tuple[str, ...] = values(OutputFormat)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_sha256_hex(value: object) -> bool:
    """True for 64 lower-case hex digits."""
    return isinstance(value, str) and bool(_HEX64.match(value))


def video_tail(path: str) -> tuple[str, str] | None:
    """``(shard, output_id)`` when ``path`` ends in ``<id[:2]>/<id>/video.mp4``, else None.

    How both backends map a recorded URI back into their layout: by its last three components
    only (nothing else of a URI is trusted, and no component ever comes from prompt text).
    """
    tail = PurePath(unquote(path)).parts[-3:]
    if len(tail) != 3:
        return None
    shard, output_id, name = tail
    if name != VIDEO_FILENAME or not is_sha256_hex(output_id) or shard != output_id[:2]:
        return None
    return shard, output_id


def output_id_of(frames_hash: str, fps: int, output_format: str) -> str:
    """The store key: sha256 over everything that decides an output directory's content."""
    payload = json.dumps(
        {"encode_profile": ENCODE_PROFILE, "fps": fps, "frames_sha256": frames_hash,
         "output_format": output_format},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


class OutputState(StrEnum):
    """What a check found (the ledger's ``outputs.state`` holds the first three)."""

    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"
    #: The quick check could not vouch for the file (no stamp, or the file changed since the
    #: stamp): it must be hashed before anything is answered from it.
    UNVERIFIED = "unverified"


@dataclass(frozen=True)
class OutputCheck:
    """One output file checked against its record."""

    uri: str
    state: OutputState
    detail: str = ""
    #: The file's sha256 when it was hashed.
    actual_sha256: str | None = None
    size_bytes: int | None = None

    @property
    def ok(self) -> bool:
        """True when the file matched its record."""
        return self.state is OutputState.OK


class RecordedOutput(Protocol):
    """What the ledger records of an output (``farm.ledger.records.OutputRecord`` has it)."""

    @property
    def uri(self) -> str:
        """The output's URI (its MP4's ``file://`` URI)."""

    @property
    def file_sha256(self) -> str:
        """The recorded sha256 of the MP4."""

    @property
    def size_bytes(self) -> int | None:
        """The recorded size of the MP4 in bytes (None: unknown)."""

    @property
    def verified_at(self) -> datetime | None:
        """When the file was last verified (None: never)."""


@dataclass(frozen=True)
class Served:
    """How a stored file is served: stream the local ``path``, or redirect to ``url`` (presigned)."""

    path: Path | None = None
    url: str | None = None


@dataclass(frozen=True)
class StoredOutput:
    """Where one render's outputs are and what they hash to.

    The paths are files for the file store, and object keys (relative to the store's
    ``s3://bucket/prefix``) for an s3 store.
    """

    output_id: str
    #: The MP4.
    path: PurePath
    uri: str
    poster_path: PurePath
    #: PNG frames (``frames/00000.png`` ...), or None for output_format "mp4".
    frames_dir: PurePath | None
    sidecar_path: PurePath
    file_sha256: str
    frames_sha256: str
    size_bytes: int
    #: (F, H, W, 3) of the frames (the MP4 may be padded to even sides).
    shape: tuple[int, int, int, int]
    fps: int
    output_format: str
    #: Seconds this call spent encoding and writing (0.0 when the output already existed).
    encode_seconds: float
    #: True when the directory already existed (written earlier or by a concurrent writer).
    reused: bool
    #: Where a damaged directory found in its place was moved (None: there was none).
    quarantined: PurePath | str | None = None


def read_sidecar_bytes(data: bytes, where: str) -> dict[str, Any]:
    """A sidecar's JSON; :class:`~farm.errors.StorageError` when it is not one."""
    try:
        sidecar = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StorageError(f"output {where} has no readable sidecar: {exc}") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise StorageError(f"output {where} has an unknown sidecar format")
    return sidecar


def stored_from_sidecar(
    directory: PurePath, sidecar: dict[str, Any], uri_of: Callable[[PurePath], str], *, encode_seconds: float,
    reused: bool,
) -> StoredOutput:
    """The :class:`StoredOutput` a sidecar describes, its files under ``directory``.

    ``uri_of`` gives the video's URI. :class:`~farm.errors.StorageError` for a malformed sidecar.
    """
    try:
        video = directory / str(sidecar["video"]["file"])
        frames_meta = sidecar.get("frames")
        shape = tuple(int(n) for n in sidecar["shape"])
        if len(shape) != 4:
            raise ValueError("shape must have 4 entries")
        return StoredOutput(
            output_id=str(sidecar["output_id"]),
            path=video,
            uri=uri_of(video),
            poster_path=directory / str(sidecar["poster"]["file"]),
            frames_dir=directory / str(frames_meta["dir"]) if frames_meta else None,
            sidecar_path=directory / SIDECAR_FILENAME,
            file_sha256=str(sidecar["video"]["sha256"]),
            frames_sha256=str(sidecar["frames_sha256"]),
            size_bytes=int(sidecar["video"]["size_bytes"]),
            shape=(shape[0], shape[1], shape[2], shape[3]),
            fps=int(sidecar["fps"]),
            output_format=str(sidecar["output_format"]),
            encode_seconds=encode_seconds,
            reused=reused,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StorageError(f"output directory {directory} has a malformed sidecar: {exc}") from exc


class OutputStore:
    """The content-addressed outputs directory (see the module docstring): the file backend."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # -- the backend API shared with the s3 store (farm.store.backend.StoreBackend) -------------
    @property
    def location(self) -> str:
        """Where the store is, for people: its root directory."""
        return str(self.root)

    def present(self) -> bool:
        """Whether the store is there on this machine (its root is a directory)."""
        return self.root.is_dir()

    def where(self, uri: str | None, *, poster: bool = False) -> str | None:
        """Where an output's video (or poster) is in this store, for people: its path (None: not the store's URI)."""
        video = self.locate(uri)
        if video is None:
            return None
        return str(video.with_name(POSTER_FILENAME) if poster else video)

    def serve(self, uri: str | None, *, poster: bool = False) -> Served | None:
        """How to serve an output's video (or poster): its file, streamed (None: it is missing)."""
        path = self.existing_file(uri, poster=poster)
        return None if path is None else Served(path=path)

    def copy_to(self, uri: str | None, dest: Path, *, poster: bool = False) -> None:
        """Copy an output's video (or poster) to ``dest`` (atomically: a temporary file, then a rename).

        :class:`~farm.errors.OutputMissing` when it is not in the store.
        """
        path = self.existing_file(uri, poster=poster)
        if path is None:
            raise OutputMissing(f"output {uri} is not in the output store {self.location}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(path, tmp)
        tmp.replace(dest)

    # -- paths and URIs -------------------------------------------------------------------------
    def _inside(self, path: PurePath) -> Path:
        """``path`` resolved; :class:`~farm.errors.OutputRefused` if it leaves the root (a symlink escape)."""
        real_root = self.root.resolve()
        real = Path(path).resolve()
        if real != real_root and not real.is_relative_to(real_root):
            raise OutputRefused(f"refusing {path}: it resolves to {real}, outside the output root {real_root}")
        return real

    def dir_for(self, output_id: str) -> Path:
        """The directory of ``output_id`` (a sha256 hex string; nothing else is accepted)."""
        if not is_sha256_hex(output_id):
            raise ValueError("output_id must be a lowercase sha256 hex string")
        return self.root / output_id[:2] / output_id

    @staticmethod
    def uri_of(path: Path) -> str:
        """The ``file://`` URI of ``path``, resolved."""
        return path.resolve().as_uri()

    def locate(self, uri: str | None) -> Path | None:
        """The video path in this store of an output URI, or None.

        By its ``<id[:2]>/<id>/video.mp4`` tail; None when the URI is not one of the
        store's.
        """
        if not uri:
            return None
        parts = urlsplit(uri)
        if parts.scheme != FILE_SCHEME:
            return None
        tail = video_tail(parts.path)
        if tail is None:
            return None
        shard, output_id = tail
        return self.root / shard / output_id / VIDEO_FILENAME

    def poster_of(self, uri: str | None) -> Path | None:
        """The poster next to an output's video (None when the URI is not the store's)."""
        video = self.locate(uri)
        return None if video is None else video.with_name(POSTER_FILENAME)

    def existing_file(self, uri: str | None, *, poster: bool = False) -> Path | None:
        """The resolved path of an output's video (or its poster) when it is a file inside the store.

        None when it is missing or resolves outside the root.
        """
        video = self.locate(uri)
        if video is None:
            return None
        target = video.with_name(POSTER_FILENAME) if poster else video
        try:
            real = self._inside(target)
        except OutputRefused:
            return None
        return real if real.is_file() else None

    def exists(self, uri: str | None) -> bool:
        """Whether an output's video is a file inside the store."""
        return self.existing_file(uri) is not None

    # -- reading --------------------------------------------------------------------------------
    def _read_sidecar(self, directory: Path) -> dict[str, Any]:
        path = self._inside(directory / SIDECAR_FILENAME)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StorageError(f"output directory {directory} has no readable sidecar: {exc}") from exc
        return read_sidecar_bytes(data, f"directory {directory}")

    def _from_sidecar(
        self, directory: Path, sidecar: dict[str, Any], *, encode_seconds: float, reused: bool
    ) -> StoredOutput:
        return stored_from_sidecar(directory, sidecar, lambda video: self.uri_of(Path(video)),
                                   encode_seconds=encode_seconds, reused=reused)

    def get(self, output_id: str) -> StoredOutput | None:
        """The stored output with this id, or None when absent."""
        directory = self.dir_for(output_id)
        if not directory.exists():
            return None
        self._inside(directory)
        return self._from_sidecar(directory, self._read_sidecar(directory), encode_seconds=0.0, reused=True)

    def verify(self, stored: StoredOutput) -> bool:
        """True when the output's files are all there and the MP4 matches its record.

        The MP4 exists under the root and its sha256 and size match the record, and the poster and
        (if any) PNG frames exist. :class:`OutputRefused` if a path escapes the root.
        """
        path = self._inside(stored.path)
        try:
            if path.stat().st_size != stored.size_bytes or file_sha256(path) != stored.file_sha256:
                return False
            if not self._inside(stored.poster_path).is_file():
                return False
            if stored.frames_dir is not None:
                frames_dir = self._inside(stored.frames_dir)
                if not all((frames_dir / f"{i:05d}.png").is_file() for i in range(stored.shape[0])):
                    return False
        except OSError:
            return False
        return True

    def check(
        self, uri: str, expected_sha256: str, *, size_bytes: int | None = None, verified_at: datetime | None = None,
        hash_file: bool = True,
    ) -> OutputCheck:
        """Check a recorded output (its video and poster) against its record.

        ``hash_file``: hash the video and compare (``ok``, ``corrupt`` or ``missing``). Without
        it, only a quick check: ``ok`` when the recorded size matches and the file has not changed
        since ``verified_at`` (its mtime is not newer), ``unverified`` when that cannot be said,
        ``missing``/``corrupt`` when the file is gone or its size differs.
        """
        video = self.locate(uri)
        if video is None:
            return OutputCheck(uri, OutputState.MISSING, "not an output URI of this store")
        try:
            real = self._inside(video)
            st = real.stat()
        except OutputRefused as exc:
            return OutputCheck(uri, OutputState.CORRUPT, str(exc))
        except FileNotFoundError:
            return OutputCheck(uri, OutputState.MISSING, "file not found")
        except OSError as exc:
            return OutputCheck(uri, OutputState.MISSING, f"unreadable: {exc.strerror or exc}")
        if not stat.S_ISREG(st.st_mode):
            return OutputCheck(uri, OutputState.CORRUPT, "not a regular file")
        if size_bytes is not None and st.st_size != size_bytes:
            return OutputCheck(uri, OutputState.CORRUPT, f"{st.st_size} bytes, recorded {size_bytes}",
                               size_bytes=st.st_size)
        if not real.with_name(POSTER_FILENAME).is_file():
            return OutputCheck(uri, OutputState.CORRUPT, "the poster next to it is missing", size_bytes=st.st_size)
        if not hash_file:
            fresh = size_bytes is not None and verified_at is not None and st.st_mtime <= verified_at.timestamp()
            if fresh:
                return OutputCheck(uri, OutputState.OK, "unchanged since verified", size_bytes=st.st_size)
            return OutputCheck(uri, OutputState.UNVERIFIED, "changed or never verified", size_bytes=st.st_size)
        try:
            actual = file_sha256(real)
        except OSError as exc:
            return OutputCheck(uri, OutputState.MISSING, f"unreadable: {exc.strerror or exc}")
        if actual != expected_sha256:
            return OutputCheck(uri, OutputState.CORRUPT, "sha256 differs from the record", actual, st.st_size)
        return OutputCheck(uri, OutputState.OK, "", actual, st.st_size)

    def vouches(self, record: RecordedOutput) -> bool:
        """The quick check a producer makes before answering a job from an output.

        The file is there with its recorded size and unchanged since it was last verified (no
        hashing).
        """
        return self.check(record.uri, record.file_sha256, size_bytes=record.size_bytes,
                          verified_at=record.verified_at, hash_file=False).ok

    # -- repair and housekeeping ------------------------------------------------------------------
    def quarantine(self, uri: str, reason: str) -> Path | None:
        """Move the directory of an output out of the way (into ``.quarantine``).

        Returns the path it now has, or None when there was nothing to move. Never deletes
        anything.
        """
        video = self.locate(uri)
        if video is None:
            return None
        directory = video.parent
        if not (directory.exists() or directory.is_symlink()):
            return None
        return self._quarantine_dir(directory, reason)

    def _quarantine_dir(self, directory: Path, reason: str) -> Path | None:
        """Move ``directory`` into the quarantine; its new path (None: it was gone already)."""
        target_root = self.root / QUARANTINE_DIRNAME
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = target_root / f"{directory.name}.{stamp}.{secrets.token_hex(3)}"
        try:
            target_root.mkdir(parents=True, exist_ok=True)
            os.rename(directory, target)
        except FileNotFoundError:  # moved by a concurrent writer or repair
            return None
        except OSError as exc:
            raise StorageError(f"cannot quarantine {directory}: {exc}") from exc
        fsync_dir(directory.parent)
        log.warning("quarantined %s as %s: %s", directory, target, reason)
        return target

    def clean_temp(self, older_than_s: float = STALE_TEMP_S) -> int:
        """Remove temporary directories/files left by writers that died (older than the given age).

        Returns how many were removed.
        """
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for parent in self.root.iterdir():
            if not parent.is_dir() or parent.is_symlink() or parent.name == QUARANTINE_DIRNAME:
                continue
            for entry in parent.iterdir():
                if not entry.name.startswith(TEMP_PREFIX):
                    continue
                try:
                    if entry.lstat().st_mtime > cutoff:
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                    removed += 1
                except OSError:
                    continue
        return removed
