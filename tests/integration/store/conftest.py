"""Fixtures of the output store's tests: a real S3-compatible server (moto, server mode).

* ``moto_s3`` — a :class:`moto_s3.MotoS3` of the test's own (a subprocess on a free loopback port)
  with the bucket created; stopped at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from moto_s3 import MotoS3


@pytest.fixture
def moto_s3(tmp_path: Path) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
