"""Writing a render's outputs into the store.

:class:`OutputWriter` is the file :class:`~farm.store.layout.OutputStore` of workers and
``farm render``; :class:`S3OutputWriter` the s3 one (:func:`open_writer` picks the one the settings
name). numpy and ffmpeg, through :mod:`farm.store.encode`: producers never import this module.

**Upload, then record.** :meth:`S3OutputWriter.put_render` encodes into a local staging folder (the
file writer's path: ``<staging>/<id[:2]>/.tmp-stage-<id>``, complete or absent), uploads every
file (the sidecar last), confirms each object (HEAD: size and sha256 metadata) and only then
returns; the runner records the job succeeded after that. A store lost on the way raises
:class:`~farm.errors.StoreUnavailable`: the runner retries the call, which finds the staged folder
intact and uploads again without encoding again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from farm.errors import OutputRefused, StorageError, StoreUnavailable
from farm.store import encode
from farm.store.files import TEMP_PREFIX, file_sha256, fsync_dir
from farm.store.layout import (
    OUTPUT_FORMATS,
    SIDECAR_FILENAME,
    OutputStore,
    StoredOutput,
    is_sha256_hex,
    output_id_of,
)
from farm.store.s3 import SHA256_METADATA, S3OutputStore, content_type

if TYPE_CHECKING:
    from farm.settings import Settings
    from farm.store.backend import StoreWriter

log = logging.getLogger(__name__)

#: Staging folders of the s3 writer start with this (a temporary entry: ``clean_temp`` removes stale ones).
STAGE_PREFIX = f"{TEMP_PREFIX}stage-"


def open_writer(settings: Settings) -> StoreWriter:
    """The output store renders are written into: the one ``FARM_OUTPUT_URL`` (or ``FARM_OUTPUT_DIR``) names."""
    if settings.output_store_kind == "s3":
        return S3OutputWriter.from_settings(settings)
    return OutputWriter(settings.outputs_path)


def checked_render(frames: np.ndarray, fps: int, job_key: str, output_format: str) -> tuple[np.ndarray, str, str]:
    """``(frames, frames sha256, output id)`` of a render to store; ValueError for bad arguments."""
    frames = encode.check_frames(frames)
    encode.check_fps(fps)
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    if not is_sha256_hex(job_key):
        raise ValueError("job_key must be a lowercase sha256 hex string")
    fhash = encode.frames_sha256(frames)
    return frames, fhash, output_id_of(fhash, fps, output_format)


class OutputWriter(OutputStore):
    """The output store, with the one way in for new outputs (:meth:`put_render`)."""

    # -- writing --------------------------------------------------------------------------------
    def put_render(self, frames: np.ndarray, fps: int, job_key: str, output_format: str = "mp4") -> StoredOutput:
        """Store one render's outputs; idempotent, safe to call concurrently with the same frames.

        ``job_key`` (sha256 hex) is recorded in the sidecar of the writer that created the
        directory; prompts are never written here (they live in the ledger). A damaged directory
        in the way is quarantined and written anew.
        """
        started = time.perf_counter()
        frames, fhash, output_id = checked_render(frames, fps, job_key, output_format)
        return self._put_checked(frames, fps, job_key, output_format, fhash, output_id, started)

    def _put_checked(self, frames: np.ndarray, fps: int, job_key: str, output_format: str, fhash: str,
                     output_id: str, started: float) -> StoredOutput:
        final = self.dir_for(output_id)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {final.parent}: {exc}") from exc
        self._inside(final.parent)
        quarantined: Path | None = None
        if final.exists() or final.is_symlink():
            found = self._intact(final, output_id, fhash)
            if found is not None:
                return found
            quarantined = self._quarantine_dir(final, f"damaged output {output_id} found by a writer")

        tmp = final.parent / f"{TEMP_PREFIX}{output_id[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            self._inside(tmp)
            sidecar = encode.write_render_files(tmp, frames, fps, job_key=job_key, output_format=output_format,
                                                frames_hash=fhash, output_id=output_id)
            fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                found = self._intact(final, output_id, fhash) if final.exists() else None
                if found is not None:  # a concurrent writer won the race: keep its directory
                    shutil.rmtree(tmp, ignore_errors=True)
                    return found
                raise
            fsync_dir(final.parent)
        except (StorageError, OutputRefused):
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StorageError(f"writing output {output_id} failed: {exc}") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        stored = self._from_sidecar(final, sidecar, encode_seconds=time.perf_counter() - started, reused=False)
        if quarantined is not None:
            stored = StoredOutput(**{**stored.__dict__, "quarantined": quarantined})
        return stored

    def _intact(self, final: Path, output_id: str, fhash: str) -> StoredOutput | None:
        """The directory already there when it holds this output, complete and unchanged.

        None when it is damaged (the caller quarantines it). A symlink out of the root is
        refused.
        """
        self._inside(final)
        try:
            stored = self._from_sidecar(final, self._read_sidecar(final), encode_seconds=0.0, reused=True)
        except StorageError as exc:
            log.warning("output %s: %s", output_id, exc)
            return None
        if stored.output_id != output_id or stored.frames_sha256 != fhash:
            log.warning("output directory %s holds another output's sidecar (%s)", final, stored.output_id)
            return None
        if not self.verify(stored):
            log.warning("output directory %s is damaged (its files do not match its sidecar)", final)
            return None
        return stored



class _Staging(OutputWriter):
    """The s3 writer's local staging: the file writer, with temporary folders (``.tmp-stage-<id>``).

    A staged folder appears complete or not at all (written under another temporary name, renamed);
    a retry finds it intact and reuses it; a damaged one is removed and written anew.
    """

    def dir_for(self, output_id: str) -> Path:
        """``<staging>/<id[:2]>/.tmp-stage-<id>``."""
        if not is_sha256_hex(output_id):
            raise ValueError("output_id must be a lowercase sha256 hex string")
        return self.root / output_id[:2] / f"{STAGE_PREFIX}{output_id}"

    def _quarantine_dir(self, directory: Path, reason: str) -> Path | None:
        log.warning("staging folder %s removed: %s", directory, reason)
        shutil.rmtree(directory, ignore_errors=True)
        return None


class S3OutputWriter(S3OutputStore):
    """The s3 output store with its one way in for new outputs (:meth:`put_render`)."""

    def put_render(self, frames: np.ndarray, fps: int, job_key: str, output_format: str = "mp4") -> StoredOutput:
        """Store one render's outputs in the bucket; returns once every object is confirmed there.

        Idempotent: an intact output already in the bucket (its sidecar, and its video downloaded
        and hashed) is returned as it is; a damaged one is quarantined and written anew. Else the
        files are encoded into the local staging folder (or found there from an earlier try),
        uploaded, confirmed, and the staging folder removed. :class:`~farm.errors.StoreUnavailable`
        when the store cannot be reached (the caller retries: nothing is encoded twice).
        """
        started = time.perf_counter()
        frames, fhash, output_id = checked_render(frames, fps, job_key, output_format)
        found, quarantined = self._existing(output_id, fhash)
        if found is not None:
            return found
        staging = _Staging(self.staging)
        staged = staging._put_checked(frames, fps, job_key, output_format, fhash, output_id, started)
        local = Path(staged.sidecar_path).parent
        folder = self.dir_key(output_id)
        self._upload(local, folder)
        shutil.rmtree(local, ignore_errors=True)
        remote = PurePosixPath(folder)
        return dataclasses.replace(
            staged, path=remote / Path(staged.path).name, uri=self.uri_of(remote / Path(staged.path).name),
            poster_path=remote / Path(staged.poster_path).name,
            frames_dir=None if staged.frames_dir is None else remote / Path(staged.frames_dir).name,
            sidecar_path=remote / SIDECAR_FILENAME, encode_seconds=time.perf_counter() - started, reused=False,
            quarantined=quarantined,
        )

    def _existing(self, output_id: str, fhash: str) -> tuple[StoredOutput | None, str | None]:
        """``(the intact output already in the bucket, None)``; else ``(None, where a damaged one went)``."""
        folder = self.dir_key(output_id)
        try:
            found = self.get(output_id)
        except StoreUnavailable:
            raise
        except StorageError as exc:  # a sidecar that cannot be read
            log.warning("output %s: %s", output_id, exc)
            return None, self.quarantine_folder(folder, f"damaged output {output_id} found by a writer")
        if found is None:  # absent (or a partial upload without its sidecar: overwritten)
            return None, None
        if found.output_id == output_id and found.frames_sha256 == fhash and self.verify(found):
            return found, None
        log.warning("output %s in %s is damaged (its objects do not match its sidecar)", output_id, self.location)
        return None, self.quarantine_folder(folder, f"damaged output {output_id} found by a writer")

    def _upload(self, local: Path, folder: str) -> None:
        """Upload a staged folder: the files, confirmed; then the sidecar, confirmed."""
        try:
            files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != SIDECAR_FILENAME)
        except OSError as exc:
            raise StorageError(f"staged output {local} unreadable: {exc}") from exc
        self._put_confirmed(local, folder, files)
        self._put_confirmed(local, folder, [local / SIDECAR_FILENAME])

    def _put_confirmed(self, local: Path, folder: str, files: list[Path]) -> None:
        """PUT each file with its sha256 as metadata, then HEAD each: size and sha256 as sent, or StoreUnavailable."""
        sent: dict[str, tuple[int, str]] = {}
        for path in files:
            key = f"{folder}/{path.relative_to(local).as_posix()}"
            try:
                size, sha = path.stat().st_size, file_sha256(path)
            except OSError as exc:  # a concurrent writer of the same output removed it: try again
                raise StorageError(f"staged file {path} unreadable: {exc}") from exc
            self._put(key, path, sha)
            sent[key] = (size, sha)
        for key, (size, sha) in sent.items():
            head = self.head(key)
            if head is None or (head.size, head.sha256) != (size, sha):
                got = "nothing" if head is None else f"{head.size} bytes, sha256 {head.sha256}"
                raise StoreUnavailable(f"{self.uri_of(key)} was uploaded ({size} bytes, sha256 {sha}) but the "
                                       f"store holds {got}")

    def _put(self, key: str, path: Path, sha: str) -> None:
        import obstore

        attributes: dict[str, str] = {"Content-Type": content_type(key), SHA256_METADATA: sha}
        try:
            self.call(f"uploading {key}", lambda: obstore.put(self.client(), key, path, attributes=attributes))
        except FileNotFoundError as exc:
            if path.exists():  # the store's 404: no such bucket
                raise StoreUnavailable(f"uploading {key} to {self.location}: not found (no such bucket?)") from exc
            raise StorageError(f"staged file {path} vanished during its upload") from exc  # (the client reads it)
