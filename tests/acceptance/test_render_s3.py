"""`farm render` into an s3 output store (moto in server mode), as a user runs it.

The embedded SQLite ledger, ``FARM_OUTPUT_URL=s3://...``: the job records the object's URI and the
sha256 of its bytes, ``--out`` downloads the video, and the same command again is a cache hit that
points at the same object.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import obstore
from moto_s3 import BUCKET, PREFIX, MotoS3

from farm.ledger import JobStatus, Ledger
from farm.settings import Settings
from farm.store import S3OutputStore, open_store

FARM = str(Path(sys.executable).with_name("farm"))
PROMPT = "a paper boat on a puddle ../../etc/passwd"




def render(data_dir: Path, server: MotoS3, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(server.env(), FARM_DATA_DIR=str(data_dir), FARM_TORCH_THREADS="1", PYTHONHASHSEED="1")
    proc = subprocess.run([FARM, "render", PROMPT, "--seed", "5", "--json", *args], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def test_farm_render_uploads_records_and_downloads(moto_s3: MotoS3, tmp_path: Path) -> None:
    data_dir = tmp_path / "farm-data"
    out = render(data_dir, moto_s3, "--out", str(tmp_path / "copy.mp4"))
    assert out["status"] == "succeeded" and not out["cache_hit"]
    with Ledger(f"sqlite:///{data_dir / 'ledger.sqlite3'}") as ledger:
        job = ledger.get_job(out["job_id"])
    assert job.status is JobStatus.SUCCEEDED and job.output_uri is not None
    assert job.output_uri.startswith(f"s3://{BUCKET}/{PREFIX}/") and out["video"] == job.output_uri
    assert out["poster"] == job.output_uri.replace("/video.mp4", "/poster.png")
    assert "boat" not in job.output_uri and "passwd" not in job.output_uri
    store = open_store(moto_s3.settings(data_dir=data_dir))
    assert isinstance(store, S3OutputStore)
    data = bytes(obstore.get(store.client(), job.output_uri.removeprefix(f"s3://{BUCKET}/{PREFIX}/")).bytes())
    assert hashlib.sha256(data).hexdigest() == job.file_sha256 == out["file_sha256"]
    assert (tmp_path / "copy.mp4").read_bytes() == data
    assert not [p for p in Settings(data_dir=data_dir, output_url=moto_s3.url).outputs_path.rglob("*")
                if p.is_file()]
    again = render(data_dir, moto_s3)
    assert again["cache_hit"] and again["video"] == job.output_uri and again["file_sha256"] == job.file_sha256
