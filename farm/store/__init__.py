"""farm's output store.

One interface, two backends (:mod:`farm.store.backend`: :func:`open_store` opens the one
``FARM_OUTPUT_URL`` names): the content-addressed directory (:mod:`farm.store.layout`, ``file://``)
and an S3-compatible bucket (:mod:`farm.store.s3`, ``s3://``; obstore, imported on first use). The
layout, URIs and checks are the same for both; file hashing and atomic writes are
:mod:`farm.store.files`. Writing renders (:mod:`farm.store.writer` with the encoder
:mod:`farm.store.encode`: numpy and ffmpeg) is imported only by workers and ``farm render``.

Importing this package loads neither numpy nor torch, nor the S3 client.
"""

from farm.store.backend import StoreBackend, StoreWriter, open_store
from farm.store.files import file_sha256, write_bytes_atomic
from farm.store.layout import (
    ENCODE_PROFILE,
    OUTPUT_FORMATS,
    POSTER_FILENAME,
    VIDEO_FILENAME,
    OutputCheck,
    OutputState,
    OutputStore,
    Served,
    StoredOutput,
    output_id_of,
)
from farm.store.s3 import S3OutputStore

__all__ = [
    "ENCODE_PROFILE",
    "OUTPUT_FORMATS",
    "POSTER_FILENAME",
    "VIDEO_FILENAME",
    "OutputCheck",
    "OutputState",
    "OutputStore",
    "S3OutputStore",
    "Served",
    "StoreBackend",
    "StoreWriter",
    "StoredOutput",
    "file_sha256",
    "open_store",
    "output_id_of",
    "write_bytes_atomic",
]
