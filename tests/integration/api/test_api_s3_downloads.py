"""The s3 output store behind the producers: downloads, results and audit (moto in server mode).

A job is submitted through the API and rendered in-process through the same
:class:`farm.worker.runner.JobRunner` a worker uses, with ``FARM_OUTPUT_URL=s3://...``: its ledger
row records the object's ``s3://`` URI and the sha256 of the object's bytes; the API answers a
download with a 307 to a presigned URL that gives those bytes; ``Client.results`` / ``farm results``
name the object and ``Client.audit`` / ``farm audit`` check it (ok, corrupt, missing) on the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import obstore
import pytest
from api_helpers import AUTH
from fastapi.testclient import TestClient
from moto_s3 import BUCKET, PREFIX, MotoS3

from farm.api.app import create_app
from farm.client import Client
from farm.ledger import JobStatus, Ledger
from farm.settings import Settings
from farm.store import S3OutputStore, open_store
from farm.store.s3 import SHA256_METADATA

FARM = str(Path(sys.executable).with_name("farm"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"




@pytest.fixture
def s3_settings(api_settings: Settings, moto_s3: MotoS3) -> Settings:
    return Settings(**{**api_settings.model_dump(), "output_dir": None, **moto_s3.settings_values()})


@pytest.fixture
def s3_http(s3_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(s3_settings), headers=AUTH) as client:
        yield client


@pytest.fixture
def rendered(s3_http: TestClient, ledger: Ledger, s3_settings: Settings, engine: Any) -> str:
    """A job submitted through the API and rendered into the s3 store by the runner a worker uses."""
    from farm.store.writer import open_writer
    from farm.worker.runner import JobRunner

    [job_id] = s3_http.post("/v1/jobs", json={"prompt": "a heron over a misty lake", "seed": 11}).json()["job_ids"]
    runner = JobRunner(ledger=ledger, engine=engine, store=open_writer(s3_settings), worker_host="test-cpu@here",
                       worker_device="cpu", lease_s=60, heartbeat_s=5)
    [outcome] = runner.run([job_id])
    assert outcome.outcome == "succeeded", outcome
    return str(job_id)


def s3_store(settings: Settings) -> S3OutputStore:
    store = open_store(settings)
    assert isinstance(store, S3OutputStore)
    return store


def key_of(uri: str) -> str:
    return uri.removeprefix(f"s3://{BUCKET}/{PREFIX}/")


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return bytes(answer.read())


def test_the_job_records_the_object_and_downloads_redirect_to_it(
    s3_http: TestClient, ledger: Ledger, s3_settings: Settings, rendered: str
) -> None:
    job = ledger.get_job(rendered)
    assert job.status is JobStatus.SUCCEEDED and job.output_uri is not None and job.file_sha256 is not None
    assert job.output_uri.startswith(f"s3://{BUCKET}/{PREFIX}/") and job.output_uri.endswith("/video.mp4")
    store = s3_store(s3_settings)
    # the recorded sha256 is the object's: its bytes hashed, and its metadata
    data = bytes(obstore.get(store.client(), key_of(job.output_uri)).bytes())
    assert hashlib.sha256(data).hexdigest() == job.file_sha256
    head = obstore.get(store.client(), key_of(job.output_uri), options={"head": True})
    assert head.attributes[SHA256_METADATA] == job.file_sha256
    record = ledger.output(job.output_uri)
    assert record is not None and record.file_sha256 == job.file_sha256 and record.size_bytes == len(data)
    # downloads: 307 to a presigned URL that gives the stored bytes
    video = s3_http.get(f"/v1/jobs/{rendered}/video", follow_redirects=False)
    assert video.status_code == 307 and video.headers["cache-control"] == "no-store"
    location = video.headers["location"]
    assert location.startswith(f"{s3_settings.s3_endpoint_url}/{BUCKET}/{PREFIX}/") and "X-Amz-Signature=" in location
    assert fetch(location) == data
    poster = s3_http.get(f"/v1/jobs/{rendered}/poster", follow_redirects=False)
    assert poster.status_code == 307 and fetch(poster.headers["location"]).startswith(PNG_SIGNATURE)
    view = s3_http.get(f"/v1/jobs/{rendered}").json()
    assert view["video_url"] == f"/v1/jobs/{rendered}/video" and "output_uri" not in view
    # the object gone: 409, as for a lost file
    obstore.delete(store.client(), key_of(job.output_uri))
    gone = s3_http.get(f"/v1/jobs/{rendered}/video", follow_redirects=False)
    assert gone.status_code == 409 and gone.json()["problems"][0]["rule"] == "file_exists"


def farm_cli(settings: Settings, server: MotoS3, *args: str) -> subprocess.CompletedProcess[str]:
    """``farm ARGS`` with the test's ledger, broker and s3 store as ``FARM_*`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(server.env(), FARM_DATABASE_URL=str(settings.database_url), FARM_BROKER_URL=str(settings.broker_url),
               FARM_DATA_DIR=str(settings.data_dir))
    return subprocess.run([FARM, *args], env=env, capture_output=True, text=True, timeout=120)


def test_results_and_audit_on_the_s3_store(ledger: Ledger, s3_settings: Settings, rendered: str,
                                           moto_s3: MotoS3) -> None:
    job = ledger.get_job(rendered)
    assert job.output_uri is not None
    store = s3_store(s3_settings)
    key = key_of(job.output_uri)
    with Client(ledger, s3_settings) as client:
        [row] = client.results(rendered)
        assert row["output"] == job.output_uri and row["file_sha256"] == job.file_sha256
        report = client.audit()
        assert report.clean and report.ok == [rendered]
        # a flipped byte with the old metadata: only the download-hash sees it
        data = bytearray(obstore.get(store.client(), key).bytes())
        data[len(data) // 2] ^= 0x5A
        obstore.put(store.client(), key, bytes(data), attributes={SHA256_METADATA: str(job.file_sha256)})
        report = client.audit()
        assert [e.job_id for e in report.corrupt] == [rendered]
        assert report.corrupt[0].path == job.output_uri
        assert report.corrupt[0].actual == hashlib.sha256(bytes(data)).hexdigest()
        record = ledger.output(job.output_uri)
        assert record is not None and record.state == "corrupt"
    # the CLI, through the same client: farm results and farm audit (exit 1: not clean)
    results = farm_cli(s3_settings, moto_s3, "results", rendered)
    assert results.returncode == 0, results.stderr
    assert json.loads(results.stdout)[0]["output"] == job.output_uri
    obstore.delete(store.client(), key)
    audit = farm_cli(s3_settings, moto_s3, "audit", "--json")
    assert audit.returncode == 1, audit.stderr
    assert [e["job_id"] for e in json.loads(audit.stdout)["missing"]] == [rendered]
    # a store that cannot be reached is not audited (it would find everything missing)
    moto_s3.stop()
    refused = farm_cli(s3_settings, moto_s3, "audit")
    assert refused.returncode == 2 and "cannot be reached" in refused.stderr, refused.stderr
    record = ledger.output(job.output_uri)
    assert record is not None and record.state == "missing"  # (the last audit's verdict, unchanged)
