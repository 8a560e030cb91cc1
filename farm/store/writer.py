"""Writing a render's outputs into the store.

:class:`OutputWriter` is the :class:`~farm.store.layout.OutputStore` of workers and
``farm render`` (numpy and ffmpeg, through :mod:`farm.store.encode`). Producers never import it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from pathlib import Path

import numpy as np

from farm.errors import OutputRefused, StorageError
from farm.store import encode
from farm.store.files import TEMP_PREFIX, fsync_dir
from farm.store.layout import OUTPUT_FORMATS, OutputStore, StoredOutput, is_sha256_hex, output_id_of

log = logging.getLogger(__name__)


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
        frames = encode.check_frames(frames)
        encode.check_fps(fps)
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
        if not is_sha256_hex(job_key):
            raise ValueError("job_key must be a lowercase sha256 hex string")
        fhash = encode.frames_sha256(frames)
        output_id = output_id_of(fhash, fps, output_format)
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

