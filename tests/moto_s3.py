"""A real S3-compatible server of a test's own: moto in server mode, on a free loopback port.

Imported as ``moto_s3`` by the s3 output store's tests (the ``moto_s3`` fixtures of
``tests/integration/store/conftest.py``, ``tests/integration/api/test_api_s3_downloads.py`` and
``tests/acceptance/farm/test_s3_worker.py``). ``python -m moto.server`` runs as a subprocess, so it
can be killed (the store is lost: every request fails) and started again on the same port (moto
keeps its buckets in memory: a restarted server is empty until :meth:`MotoS3.create_bucket`).
No mocks: farm talks to it over HTTP with its real S3 client. Nothing leaves the loopback.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from private_redis import free_port

from farm.settings import Settings

#: Bucket and prefix the tests store outputs under.
BUCKET = "farm-test-outputs"
PREFIX = "renders/v1"
#: Credentials moto accepts (it does not check them); never real secrets.
ACCESS_KEY_ID = "farm-test-key"
SECRET_ACCESS_KEY = "farm-test-secret"
START_TIMEOUT_S = 30.0


class MotoS3:
    """``python -m moto.server`` on its own port; :meth:`stop` / :meth:`start` keep the port."""

    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The output store URL (``FARM_OUTPUT_URL``)."""
        return f"s3://{BUCKET}/{PREFIX}"

    def start(self, *, bucket: bool = True) -> None:
        """Start the server (empty) and, unless told otherwise, create the bucket."""
        assert self.proc is None, "already running"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.alive():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"moto server on port {self.port} did not start:\n{self.text()}", pytrace=False)
            time.sleep(0.05)
        if bucket:
            self.create_bucket()

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                return True
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """Kill the server: the store is gone (and its objects with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def create_bucket(self, name: str = BUCKET) -> None:
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def settings_values(self) -> dict[str, Any]:
        """The farm settings (field names) of an output store in this server's bucket."""
        return {
            "output_url": self.url,
            "s3_endpoint_url": self.endpoint,
            "s3_access_key_id": ACCESS_KEY_ID,
            "s3_secret_access_key": SECRET_ACCESS_KEY,
        }

    def env(self) -> dict[str, str]:
        """The same as ``FARM_*`` variables (for farm subprocesses)."""
        return {f"FARM_{k.upper()}": str(v) for k, v in self.settings_values().items()}

    def settings(self, **values: Any) -> Settings:
        return Settings(**{**self.settings_values(), **values})
