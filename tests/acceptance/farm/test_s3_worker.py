"""Real ``farm worker`` processes writing to an s3 output store (moto in server mode, a subprocess).

Upload, then record: the job's ledger row names the object (``s3://bucket/prefix/ab/<id>/video.mp4``)
and the sha256 of its bytes, and a worker that loses the store keeps retrying the upload (the job
stays running, never succeeded without its object) until the store is back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import obstore
import pytest
from farm_harness import FarmEnv, wait_until
from moto_s3 import BUCKET, PREFIX, MotoS3

from farm.ledger import JobRecord
from farm.store import S3OutputStore, open_store


@pytest.fixture
def s3_env(farm_env: FarmEnv, moto_s3: MotoS3, tmp_path: Path) -> FarmEnv:
    farm_env.overrides.update(moto_s3.env(), FARM_OUTPUT_DIR=str(tmp_path / "staging"))
    return farm_env


def store_of(env: FarmEnv) -> S3OutputStore:
    store = open_store(env.settings())
    assert isinstance(store, S3OutputStore)
    return store


def assert_stored(env: FarmEnv, job: JobRecord) -> None:
    """The job succeeded once, recording the object's URI and the sha256 of the object's bytes."""
    assert job.status.value == "succeeded", (job.status, job.error_type, job.error_message)
    assert job.output_uri is not None and job.file_sha256 is not None
    assert job.output_uri.startswith(f"s3://{BUCKET}/{PREFIX}/") and job.output_uri.endswith("/video.mp4")
    store = store_of(env)
    key = job.output_uri.removeprefix(f"s3://{BUCKET}/{PREFIX}/")
    data = bytes(obstore.get(store.client(), key).bytes())
    assert hashlib.sha256(data).hexdigest() == job.file_sha256
    assert store.check(job.output_uri, job.file_sha256).ok
    kinds = [e.kind for e in env.ledger.events(job.id)]
    assert kinds.count("succeeded") == 1, kinds
    assert not [p for p in store.staging.rglob("*") if p.is_file()]  # staging emptied after the upload


def test_a_worker_stores_its_output_in_s3(s3_env: FarmEnv) -> None:
    s3_env.start_worker("s3")
    [job_id] = s3_env.submit(s3_env.new_jobs(1, prefix="a kestrel hovering"))
    [job] = s3_env.wait_terminal([job_id], 90)
    assert_stored(s3_env, job)
    assert "a kestrel" not in str(job.output_uri)  # no key component from prompt text


def test_a_worker_that_loses_the_store_retries_and_never_succeeds_without_its_object(
    s3_env: FarmEnv, moto_s3: MotoS3
) -> None:
    worker = s3_env.start_worker("s3")
    moto_s3.stop()  # the store is gone before the render is uploaded
    [job_id] = s3_env.submit(s3_env.new_jobs(1, prefix="a heron in the rain"))
    wait_until(lambda: f"storing the output of job {job_id}: attempt 2 failed (StoreUnavailable" in worker.text(),
               90, what="the worker retrying its upload")
    job = s3_env.ledger.get_job(job_id)
    assert job.status.value == "running" and job.output_uri is None and job.file_sha256 is None
    # back, but empty (the bucket was lost with the server): still nothing to record
    moto_s3.start(bucket=False)
    retries = worker.text().count(f"storing the output of job {job_id}")
    wait_until(lambda: worker.text().count(f"storing the output of job {job_id}") > retries + 1, 30,
               what="more upload retries")
    assert s3_env.ledger.get_job(job_id).status.value == "running"
    moto_s3.create_bucket()
    [job] = s3_env.wait_terminal([job_id], 60)
    assert_stored(s3_env, job)
    assert job.attempts == 1  # retried inside its attempt: the render was kept, not redone
