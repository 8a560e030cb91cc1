"""farm's output store.

The layout, URIs and checks of rendered files (:mod:`farm.store.layout`), file hashing and atomic
writes (:mod:`farm.store.files`), and writing renders (:mod:`farm.store.writer` with the encoder
:mod:`farm.store.encode`: numpy and ffmpeg, imported only by workers and ``farm render``).

Importing this package loads neither numpy nor torch.
"""

from farm.store.files import file_sha256, write_bytes_atomic
from farm.store.layout import (
    ENCODE_PROFILE,
    OUTPUT_FORMATS,
    POSTER_FILENAME,
    VIDEO_FILENAME,
    OutputCheck,
    OutputState,
    OutputStore,
    StoredOutput,
    output_id_of,
)

__all__ = [
    "ENCODE_PROFILE",
    "OUTPUT_FORMATS",
    "POSTER_FILENAME",
    "VIDEO_FILENAME",
    "OutputCheck",
    "OutputState",
    "OutputStore",
    "StoredOutput",
    "file_sha256",
    "output_id_of",
    "write_bytes_atomic",
]
