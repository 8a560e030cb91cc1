"""The s3 output store against a real S3-compatible server (moto in server mode, no mocks).

Renders go in through :class:`farm.store.writer.S3OutputWriter` and come back through the producers'
API (exists, check, verify, where, serve, copy_to, vouches, quarantine): the file store's layout
under the bucket's prefix, every object carrying its sha256, tampering and loss detected, presigned
downloads that give the stored bytes, a store outage reported as a transient error.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import obstore
import pytest
from moto_s3 import ACCESS_KEY_ID, BUCKET, PREFIX, SECRET_ACCESS_KEY, MotoS3

from farm.errors import OutputMissing, StoreUnavailable
from farm.store import OutputState, S3OutputStore, encode, open_store
from farm.store.layout import QUARANTINE_DIRNAME, video_tail
from farm.store.s3 import SHA256_METADATA
from farm.store.writer import STAGE_PREFIX, OutputWriter, S3OutputWriter, open_writer

JOB_KEY = "cd" * 32


@dataclass(frozen=True)
class Recorded:
    """What the ledger records of an output (the store's RecordedOutput)."""

    uri: str
    file_sha256: str
    size_bytes: int | None
    verified_at: datetime | None


def frames_of(seed: int, f: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (f, 32, 32, 3), dtype=np.uint8)


def writer(server: MotoS3, tmp_path: Path, **extra: object) -> S3OutputWriter:
    store = open_writer(server.settings(data_dir=tmp_path / "data", **extra))
    assert isinstance(store, S3OutputWriter)
    return store


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return bytes(answer.read())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_render_goes_in_and_comes_back(moto_s3: MotoS3, tmp_path: Path) -> None:
    store = writer(moto_s3, tmp_path)
    frames = frames_of(1)
    stored = store.put_render(frames, 8, JOB_KEY, "mp4+frames")
    oid = stored.output_id
    assert not stored.reused
    # the recorded URI: the file store's layout under the bucket's prefix
    assert stored.uri == f"s3://{BUCKET}/{PREFIX}/{oid[:2]}/{oid}/video.mp4"
    assert video_tail(stored.uri.removeprefix("s3://")) == (oid[:2], oid)
    assert store.exists(stored.uri) and store.verify(stored)
    assert store.where(stored.uri, poster=True) == f"s3://{BUCKET}/{PREFIX}/{oid[:2]}/{oid}/poster.png"
    check = store.check(stored.uri, stored.file_sha256, size_bytes=stored.size_bytes)
    assert check.state is OutputState.OK and check.actual_sha256 == stored.file_sha256
    assert store.get(oid) == stored.__class__(**{**stored.__dict__, "encode_seconds": 0.0, "reused": True})
    # the same keys as the file store's files for the same frames, and the same bytes
    local = OutputWriter(tmp_path / "files").put_render(frames, 8, JOB_KEY, "mp4+frames")
    folder = Path(local.path).parent
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    keys = store.keys(f"{oid[:2]}/{oid}")
    assert [k.removeprefix(f"{oid[:2]}/{oid}/") for k in keys] == files
    assert len([k for k in keys if "/frames/" in k]) == frames.shape[0]
    for key in keys:  # every object carries its sha256 (what the upload was confirmed against)
        data = bytes(obstore.get(store.client(), key).bytes())
        assert data == (folder / key.removeprefix(f"{oid[:2]}/{oid}/")).read_bytes()
        assert obstore.get(store.client(), key, options={"head": True}).attributes[SHA256_METADATA] == sha(data)
    # nothing left in the local staging folder
    assert not [p for p in store.staging.rglob("*") if p.is_file()]
    # presigned download and a copy give the stored bytes
    served = store.serve(stored.uri)
    assert served is not None and served.path is None and served.url is not None
    assert sha(download(served.url)) == stored.file_sha256
    poster = store.serve(stored.uri, poster=True)
    assert poster is not None and poster.url is not None
    assert download(poster.url) == (folder / "poster.png").read_bytes()
    store.copy_to(stored.uri, tmp_path / "out" / "copy.mp4")
    assert sha((tmp_path / "out" / "copy.mp4").read_bytes()) == stored.file_sha256


def test_storing_again_reuses_the_objects(moto_s3: MotoS3, tmp_path: Path) -> None:
    store = writer(moto_s3, tmp_path)
    first = store.put_render(frames_of(2), 8, JOB_KEY)
    again = store.put_render(frames_of(2), 8, JOB_KEY)
    assert again.reused and again.uri == first.uri and again.file_sha256 == first.file_sha256
    assert again.frames_dir is None and first.frames_dir is None


def test_tampering_and_loss_are_detected(moto_s3: MotoS3, tmp_path: Path) -> None:
    store = writer(moto_s3, tmp_path)
    stored = store.put_render(frames_of(3), 8, JOB_KEY)
    key = str(stored.path)
    now = datetime.now(UTC) + timedelta(seconds=1)
    record = Recorded(stored.uri, stored.file_sha256, stored.size_bytes, now)
    assert store.vouches(record)  # HEAD: size, sha256 metadata, unchanged since verified
    assert not store.vouches(Recorded(stored.uri, stored.file_sha256, stored.size_bytes, None))  # never verified
    # a flipped byte, same size, uploaded with its old metadata: only the download-hash sees it
    data = bytearray(obstore.get(store.client(), key).bytes())
    data[len(data) // 2] ^= 0x5A
    obstore.put(store.client(), key, bytes(data), attributes={SHA256_METADATA: stored.file_sha256})
    assert not store.verify(stored)
    check = store.check(stored.uri, stored.file_sha256, size_bytes=stored.size_bytes)
    assert check.state is OutputState.CORRUPT and check.actual_sha256 == sha(bytes(data))
    later = Recorded(stored.uri, stored.file_sha256, stored.size_bytes, now - timedelta(days=1))
    assert not store.vouches(later)  # changed since it was verified
    # a different size is corrupt without hashing; a lost poster or video too
    quick = store.check(stored.uri, stored.file_sha256, size_bytes=stored.size_bytes + 1, hash_file=False)
    assert quick.state is OutputState.CORRUPT
    obstore.delete(store.client(), str(stored.poster_path))
    assert store.check(stored.uri, stored.file_sha256).state is OutputState.CORRUPT
    obstore.delete(store.client(), key)
    assert store.check(stored.uri, stored.file_sha256).state is OutputState.MISSING
    assert not store.exists(stored.uri) and store.serve(stored.uri) is None
    with pytest.raises(OutputMissing):
        store.copy_to(stored.uri, tmp_path / "gone.mp4")
    # URIs that are not this store's
    assert store.check(f"file:///x/{stored.output_id[:2]}/{stored.output_id}/video.mp4", "0" * 64).state is (
        OutputState.MISSING)
    assert store.where("s3://b/p/ab/not-an-id/video.mp4") is None


def test_a_damaged_output_is_quarantined_and_written_again(moto_s3: MotoS3, tmp_path: Path) -> None:
    store = writer(moto_s3, tmp_path)
    stored = store.put_render(frames_of(4), 8, JOB_KEY)
    obstore.put(store.client(), str(stored.path), b"not a video", attributes={SHA256_METADATA: "0" * 64})
    again = store.put_render(frames_of(4), 8, JOB_KEY)
    assert not again.reused and again.file_sha256 == stored.file_sha256 and store.verify(again)
    assert isinstance(again.quarantined, str)
    assert again.quarantined.startswith(f"s3://{BUCKET}/{PREFIX}/{QUARANTINE_DIRNAME}/{stored.output_id}.")
    moved = store.keys(again.quarantined.removeprefix(f"s3://{BUCKET}/{PREFIX}/"))
    assert any(k.endswith("/video.mp4") for k in moved)  # kept, never deleted
    # repair's path: quarantine by URI moves the objects aside
    target = store.quarantine(again.uri, "test")
    assert target is not None and not store.exists(again.uri)
    assert store.quarantine(again.uri, "again") is None  # nothing left to move


def test_a_lost_store_is_a_transient_error(moto_s3: MotoS3, tmp_path: Path) -> None:
    store = writer(moto_s3, tmp_path)
    stored = store.put_render(frames_of(5), 8, JOB_KEY)
    assert store.present()
    moto_s3.stop()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.check(stored.uri, stored.file_sha256)
    with pytest.raises(StoreUnavailable):
        store.put_render(frames_of(6), 8, JOB_KEY)  # nothing is recorded as stored
    assert time.monotonic() - started < 30  # the S3 client's own retries are short: farm's retries wrap them
    assert not store.present()
    assert not store.vouches(Recorded(stored.uri, stored.file_sha256, stored.size_bytes, datetime.now(UTC)))
    # back, but empty (moto keeps buckets in memory): no bucket is a transient error too
    moto_s3.start(bucket=False)
    with pytest.raises(StoreUnavailable):
        store.put_render(frames_of(6), 8, JOB_KEY)
    moto_s3.create_bucket()
    assert store.check(stored.uri, stored.file_sha256).state is OutputState.MISSING
    again = store.put_render(frames_of(6), 8, JOB_KEY)
    assert store.verify(again)


def test_an_interrupted_upload_resumes_from_the_staged_files(
    moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A try that fails mid-upload leaves its staged files; the next try uploads them without encoding again."""
    store = writer(moto_s3, tmp_path)
    encodes: list[int] = []
    real = encode.write_render_files

    def counted(*args: Any, **kwargs: Any) -> Any:
        encodes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(encode, "write_render_files", counted)
    moto_s3.stop()
    moto_s3.start(bucket=False)  # the server answers, its bucket is gone: every upload fails
    with pytest.raises(StoreUnavailable):
        store.put_render(frames_of(7), 8, JOB_KEY)
    staged = sorted(p.name for p in store.staging.rglob("*") if p.is_file())
    assert encodes == [1] and staged == ["output.json", "poster.png", "video.mp4"]
    moto_s3.create_bucket()
    stored = store.put_render(frames_of(7), 8, JOB_KEY)
    assert encodes == [1]  # uploaded from the staged files
    assert store.verify(stored) and not [p for p in store.staging.rglob("*") if p.is_file()]
    # a staged folder left by a dead writer is removed by clean_temp (the worker's start) once stale
    leftover = store.staging / stored.output_id[:2] / f"{STAGE_PREFIX}{stored.output_id}"
    leftover.mkdir(parents=True)
    (leftover / "video.mp4").write_bytes(b"partial")
    assert store.clean_temp() == 0
    old = time.time() - 7200
    os.utime(leftover, (old, old))
    assert store.clean_temp() == 1 and not leftover.exists()


def test_settings_open_the_s3_store(moto_s3: MotoS3, tmp_path: Path) -> None:
    settings = moto_s3.settings(data_dir=tmp_path / "data", s3_public_endpoint_url=f"http://localhost:{moto_s3.port}",
                                s3_presign_expiry_s=60)
    store = open_store(settings)
    assert isinstance(store, S3OutputStore) and not isinstance(store, S3OutputWriter)
    assert store.location == f"s3://{BUCKET}/{PREFIX}" and store.staging == tmp_path / "data" / "staging"
    assert SECRET_ACCESS_KEY not in repr(store) and ACCESS_KEY_ID not in repr(store)
    stored = writer(moto_s3, tmp_path).put_render(frames_of(8), 8, JOB_KEY)
    served = store.serve(stored.uri)
    assert served is not None and served.url is not None
    assert served.url.startswith(f"http://localhost:{moto_s3.port}/{BUCKET}/{PREFIX}/")  # the public endpoint
    assert "X-Amz-Expires=60" in served.url
    assert sha(download(served.url)) == stored.file_sha256
