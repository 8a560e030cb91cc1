"""The output store's one interface, and opening the backend the settings name.

``FARM_OUTPUT_URL`` names the store (:attr:`farm.settings.Settings.output_store_url`):

* ``file:///dir`` (the embedded default, also what ``FARM_OUTPUT_DIR`` means):
  :class:`farm.store.layout.OutputStore`, a directory, local or mounted on every node;
* ``s3://bucket/prefix``: :class:`farm.store.s3.S3OutputStore`, any S3-compatible object store
  (AWS S3, MinIO, Ceph), through obstore (imported on first use only).

Both keep the same content-addressed layout (``<id[:2]>/<id>/video.mp4``, ``poster.png``,
``output.json``, ``frames/``) and answer the same calls, :class:`StoreBackend`: the producers'
(:func:`open_store`: audit, results, cache-hit checks, downloads) and, with :class:`StoreWriter`,
the writers' (:func:`farm.store.writer.open_writer`: workers and ``farm render``).

Standard library only (numpy appears in a type annotation alone).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Protocol

from farm.store.layout import STALE_TEMP_S, OutputCheck, OutputStore, RecordedOutput, Served, StoredOutput

if TYPE_CHECKING:
    import numpy as np

    from farm.settings import Settings


class StoreBackend(Protocol):
    """What every output store answers (the file store and the s3 store)."""

    @property
    def location(self) -> str:
        """Where the store is, for people: a directory or ``s3://bucket/prefix``."""

    def present(self) -> bool:
        """Whether the store can be reached from this machine."""

    def where(self, uri: str | None, *, poster: bool = False) -> str | None:
        """Where an output's video (or poster) is in this store, for people (None: not the store's URI)."""

    def exists(self, uri: str | None) -> bool:
        """Whether an output's video is in the store."""

    def serve(self, uri: str | None, *, poster: bool = False) -> Served | None:
        """How to serve an output's video or poster: a local file or a presigned URL (None: missing)."""

    def copy_to(self, uri: str | None, dest: Path, *, poster: bool = False) -> None:
        """Copy an output's video (or poster) to a local file (:class:`~farm.errors.OutputMissing`: absent)."""

    def check(
        self, uri: str, expected_sha256: str, *, size_bytes: int | None = None, verified_at: datetime | None = None,
        hash_file: bool = True,
    ) -> OutputCheck:
        """Check a recorded output against its record: hashed (``hash_file``), or the quick check."""

    def vouches(self, record: RecordedOutput) -> bool:
        """The quick check a producer makes before answering a job from an output."""

    def quarantine(self, uri: str, reason: str) -> PurePath | str | None:
        """Move an output out of the way (never deleted); where it went (None: nothing to move)."""

    def clean_temp(self, older_than_s: float = STALE_TEMP_S) -> int:
        """Remove local temporary files left by writers that died; how many."""


class StoreWriter(StoreBackend, Protocol):
    """An output store renders are written into (workers and ``farm render``)."""

    def put_render(self, frames: np.ndarray, fps: int, job_key: str, output_format: str = "mp4") -> StoredOutput:
        """Store one render's files; returns only once they are all in the store (idempotent)."""


def open_store(settings: Settings) -> StoreBackend:
    """The output store the settings name (``FARM_OUTPUT_URL``, else ``FARM_OUTPUT_DIR``), for reading."""
    if settings.output_store_kind == "s3":
        from farm.store.s3 import S3OutputStore

        return S3OutputStore.from_settings(settings)
    return OutputStore(settings.outputs_path)
