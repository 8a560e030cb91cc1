"""Downloads: ``GET /v1/jobs/{id}/video`` and ``/poster`` serve the job's recorded output.

Only from inside FARM_OUTPUT_DIR; 404 before the job succeeded, 409 when the stored file is
gone.

The job is rendered for real: submitted through the API, then run in-process on the CPU through
the same :class:`farm.worker.runner.JobRunner` a worker uses (the test imports the engine; the API never
does).
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from farm.ledger import JobStatus, Ledger
from farm.settings import Settings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRAVERSALS = [
    "/v1/jobs/..%2F..%2F..%2Fetc%2Fpasswd/video",
    "/v1/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd/poster",
    "/v1/jobs/../../../etc/passwd",
    "/v1/jobs/..%5C..%5Cetc%5Cpasswd/video",
    "/v1/jobs/%252e%252e%252fetc%252fpasswd/video",
    "/v1/jobs/etc%2Fpasswd%00/video",
    "/v1/jobs/%2Fetc%2Fpasswd/poster",
]


def render(ledger: Ledger, settings: Settings, engine: Any, job_id: str) -> None:
    """Run a queued job through the real runner, as a worker does."""
    from farm.store.writer import OutputWriter
    from farm.worker.runner import JobRunner

    runner = JobRunner(ledger=ledger, engine=engine, store=OutputWriter(settings.outputs_path),
                       worker_host="test-cpu@here", worker_device="cpu", lease_s=60, heartbeat_s=5)
    [outcome] = runner.run([job_id])
    assert outcome.outcome == "succeeded", outcome


@pytest.fixture
def rendered(http: TestClient, ledger: Ledger, api_settings: Settings, engine: Any) -> str:
    [job_id] = http.post("/v1/jobs", json={"prompt": "a red fox running through snow", "seed": 7}).json()["job_ids"]
    render(ledger, api_settings, engine, job_id)
    return str(job_id)


def stored_video(ledger: Ledger, job_id: str) -> Path:
    uri = ledger.get_job(job_id).output_uri
    assert uri is not None and uri.startswith("file://")
    return Path(uri.removeprefix("file://"))


def test_video_and_poster_of_a_succeeded_job(http: TestClient, ledger: Ledger, rendered: str) -> None:
    job = ledger.get_job(rendered)
    assert job.status is JobStatus.SUCCEEDED
    video = http.get(f"/v1/jobs/{rendered}/video")
    assert video.status_code == 200
    assert video.headers["content-type"] == "video/mp4"
    assert hashlib.sha256(video.content).hexdigest() == job.file_sha256
    assert f'filename="{rendered}.mp4"' in video.headers["content-disposition"]
    poster = http.get(f"/v1/jobs/{rendered}/poster")
    assert poster.status_code == 200 and poster.headers["content-type"] == "image/png"
    assert poster.content.startswith(PNG_SIGNATURE)
    assert poster.content == stored_video(ledger, rendered).with_name("poster.png").read_bytes()
    view = http.get(f"/v1/jobs/{rendered}").json()
    assert view["video_url"] == f"/v1/jobs/{rendered}/video" and "output_uri" not in view


def test_no_file_before_success(http: TestClient) -> None:
    [job_id] = http.post("/v1/jobs", json={"prompt": "a fox", "seed": 1}).json()["job_ids"]
    for kind in ("video", "poster"):
        r = http.get(f"/v1/jobs/{job_id}/{kind}")
        assert r.status_code == 404
        assert r.json()["problems"][0]["rule"] == "succeeded"
    assert http.get(f"/v1/jobs/{uuid.uuid4()}/video").status_code == 404


def test_missing_file_is_409(http: TestClient, ledger: Ledger, rendered: str) -> None:
    poster = stored_video(ledger, rendered).with_name("poster.png")
    poster.unlink()
    r = http.get(f"/v1/jobs/{rendered}/poster")
    assert r.status_code == 409
    assert r.json()["problems"][0]["rule"] == "file_exists"
    assert str(poster) not in r.text  # no server paths in answers
    assert http.get(f"/v1/jobs/{rendered}/video").status_code == 200


def test_a_recorded_path_outside_the_output_dir_is_never_served(
    http: TestClient, ledger: Ledger, api_settings: Settings, tmp_path: Path
) -> None:
    secret = tmp_path / "outside" / "video.mp4"
    secret.parent.mkdir()
    secret.write_bytes(b"not for download")
    (secret.parent / "poster.png").write_bytes(b"not for download either")
    [job_id] = http.post("/v1/jobs", json={"prompt": "a fox", "seed": 2}).json()["job_ids"]
    assert ledger.claim(job_id, worker_host="w", worker_device="cpu", lease_s=60) is not None
    ledger.record_success(
        job_id, output_uri=f"file://{secret}", file_sha256="0" * 64, frames_sha256="1" * 64,
        effective_params={}, weights_fingerprint="fp", env_fingerprint={}, timings={"render_s": 1.0},
    )
    for kind in ("video", "poster"):
        r = http.get(f"/v1/jobs/{job_id}/{kind}")
        assert r.status_code == 409, kind
        assert b"not for download" not in r.content


def test_a_symlink_out_of_the_output_dir_is_never_served(
    http: TestClient, ledger: Ledger, rendered: str, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(b"private bytes")
    video = stored_video(ledger, rendered)
    video.unlink()
    video.symlink_to(outside)
    r = http.get(f"/v1/jobs/{rendered}/video")
    assert r.status_code == 409
    assert b"private bytes" not in r.content


def test_path_traversal_attempts_are_404(http: TestClient, rendered: str) -> None:
    attempts = [*TRAVERSALS, f"/v1/jobs/{rendered}%2F..%2F..%2F..%2Fetc%2Fpasswd/video",
                f"/v1/jobs/{rendered}/..%2F..%2Fpasswd", f"/v1/jobs/{rendered}/video/..%2F..%2F..%2Fetc%2Fpasswd"]
    for path in attempts:
        r = http.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert b"root:" not in r.content
    assert http.get(f"/v1/jobs/{rendered}/video").status_code == 200  # the job itself is servable
