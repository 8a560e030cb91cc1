"""`farm render` end to end, as a user runs it: a fresh data directory, nothing configured.

The command is run as a real subprocess (the installed console script); the ledger row it leaves
is then read back through the gateway and every recorded field is checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from farm.ledger import JobStatus, Ledger
from farm.seeds import seed_from_prompt

FARM = str(Path(sys.executable).with_name("farm"))
PROMPT = "a red fox running through snow, cinematic ../../etc/passwd"


def run_farm(args: list[str], data_dir: Path, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_DATA_DIR=str(data_dir), FARM_TORCH_THREADS="1", PYTHONHASHSEED="1")
    env.update(env_extra)
    return subprocess.run([FARM, *args], env=env, capture_output=True, text=True, timeout=240)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def render_json(data_dir: Path, *args: str, **env: str) -> dict[str, Any]:
    proc = run_farm(["render", PROMPT, "--json", *args], data_dir, **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def first_render(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("fresh") / "farm-data"  # does not exist yet
    return data_dir, render_json(data_dir, "--seed", "7", "--tag", "campaign=spring")


def test_render_fills_every_recorded_field(first_render: tuple[Path, dict[str, Any]]) -> None:
    data_dir, out = first_render
    assert out["status"] == "succeeded"
    ledger_file = data_dir / "ledger.sqlite3"
    assert ledger_file.is_file()
    with Ledger(f"sqlite:///{ledger_file}") as ledger:
        job = ledger.get_job(out["job_id"])
        events = ledger.events(job.id)
    assert job.status is JobStatus.SUCCEEDED
    assert job.prompt == "a red fox running through snow, cinematic ../../etc/passwd"
    assert job.seed == 7 and job.seed_strategy == "explicit"
    assert job.model_name == "tiny" and job.priority == "interactive"
    assert job.params["steps"] == 8 and job.params["boundary_ratio"] == 0.875
    assert job.requested_params["seed"] == 7
    assert job.effective_params == {k: job.params[k] for k in job.effective_params}
    assert job.tags == {"campaign": "spring"}
    assert len(job.job_key) == 64 and len(job.weights_fingerprint or "") == 64
    assert job.attempts == 1 and job.max_attempts >= 1
    assert job.worker_host and job.worker_device == "cpu"
    assert job.created_at and job.started_at and job.finished_at
    assert job.started_at <= job.finished_at
    assert job.lease_expires_at is None and job.progress == 1.0
    assert job.error_type is None and job.error_message is None
    timings = job.timings or {}
    assert timings["render_s"] > 0 and timings["load_s"] >= 0 and "encode_s" in timings
    assert timings["stats"]["batch"]["swaps"] == 0  # default policy "none": both experts resident
    env = job.env_fingerprint or {}
    for key in ("python", "torch", "diffusers", "transformers"):
        assert key in json.dumps(env), key
    # The output is content-addressed under the data dir; its hash is what the ledger says.
    assert job.output_uri and job.output_uri.startswith("file://")
    video = Path(job.output_uri.removeprefix("file://"))
    assert video.is_file() and video.is_relative_to(data_dir / "outputs")
    assert sha256_file(video) == job.file_sha256 == out["file_sha256"]
    assert job.frames_sha256 == out["frames_sha256"]
    assert Path(out["poster"]).is_file()
    # No path is built from prompt text.
    assert "fox" not in str(video) and "passwd" not in str(video)
    assert [e.kind for e in events] == ["created", "claimed", "succeeded"]


def test_same_command_same_frames_and_bytes(first_render: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """A fresh process with another hash seed and another torch thread count: same frames, same MP4."""
    _, first = first_render
    again = render_json(
        tmp_path / "other", "--seed", "7", "--tag", "campaign=spring", PYTHONHASHSEED="2", FARM_TORCH_THREADS="2"
    )
    assert again["job_id"] != first["job_id"]
    assert again["frames_sha256"] == first["frames_sha256"]
    assert again["file_sha256"] == first["file_sha256"]
    other_seed = render_json(tmp_path / "other", "--seed", "8")
    assert other_seed["frames_sha256"] != first["frames_sha256"]


def test_seed_from_prompt_and_out_copy(tmp_path: Path) -> None:
    out_path = tmp_path / "copies" / "clip.mp4"
    out = render_json(tmp_path / "d", "--seed-from-prompt", "--salt", "v1", "--out", str(out_path))
    assert out["seed"] == seed_from_prompt(PROMPT, "v1") and out["seed_strategy"] == "prompt"
    assert sha256_file(out_path) == out["file_sha256"]


def test_random_seed_is_recorded(tmp_path: Path) -> None:
    out = render_json(tmp_path / "d", "--steps", "2")
    assert out["seed_strategy"] == "random" and 0 <= out["seed"] < 2**32


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--seed", "-1"], "seed"),
        (["--seed", "1", "--width", "33"], "width"),
        (["--seed", "1", "--frames", "8"], "num_frames"),
        (["--seed", "1", "--guidance", "nan"], "guidance_scale"),
        (["--seed", "1", "--seed-from-prompt"], "seed"),
    ],
)
def test_bad_input_names_the_field_and_records_nothing(tmp_path: Path, args: list[str], field: str) -> None:
    data_dir = tmp_path / "d"
    proc = run_farm(["render", PROMPT, *args], data_dir)
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr
    assert not (data_dir / "ledger.sqlite3").exists()  # rejected before the ledger was opened


def test_blank_prompt_rejected(tmp_path: Path) -> None:
    proc = run_farm(["render", "   ", "--seed", "1"], tmp_path / "d")
    assert proc.returncode == 2 and "prompt" in proc.stderr and "not_blank" in proc.stderr


def test_render_into_postgres_ledger(pg_url: str, tmp_path: Path) -> None:
    out = render_json(tmp_path / "d", "--seed", "3", "--steps", "2", FARM_DATABASE_URL=pg_url)
    with Ledger(pg_url) as ledger:
        job = ledger.get_job(out["job_id"])
    assert job.status is JobStatus.SUCCEEDED and job.frames_sha256 == out["frames_sha256"]
    assert not (tmp_path / "d" / "ledger.sqlite3").exists()


def test_same_job_again_is_a_cache_hit_unless_no_cache(tmp_path: Path) -> None:
    """The runner's cache.

    The same spec and weights in the same ledger are answered from the first job's output, linked
    to it; --no-cache renders again (same frames).
    """
    data_dir = tmp_path / "d"
    first = render_json(data_dir, "--seed", "11", "--steps", "2")
    again = render_json(data_dir, "--seed", "11", "--steps", "2")
    assert again["cache_of_job_id"] == first["job_id"] and again["job_id"] != first["job_id"]
    assert again["frames_sha256"] == first["frames_sha256"] and again["video"] == first["video"]
    forced = render_json(data_dir, "--seed", "11", "--steps", "2", "--no-cache")
    assert forced["cache_of_job_id"] is None and forced["frames_sha256"] == first["frames_sha256"]
    with Ledger(f"sqlite:///{data_dir / 'ledger.sqlite3'}") as ledger:
        assert [e.kind for e in ledger.events(again["job_id"])][-1] == "cache-hit"
        assert (ledger.get_job(forced["job_id"]).timings or {}).get("render_s", 0) > 0


def test_a_second_identical_render_says_it_is_a_cache_hit(tmp_path: Path) -> None:
    """What a person sees.

    The second identical `farm render` says, right under the job line, that it was answered from
    the first job without rendering; the first one shows its render timing.
    """
    data_dir = tmp_path / "d"
    first = run_farm(["render", "a paper boat in the rain", "--seed", "3", "--steps", "2"], data_dir)
    second = run_farm(["render", "a paper boat in the rain", "--seed", "3", "--steps", "2"], data_dir)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    first_job = first.stdout.splitlines()[0].split()[1]
    assert "cache " not in first.stdout and "timing   render" in first.stdout
    lines = second.stdout.splitlines()
    assert lines[1].startswith(f"cache    hit: answered from job {first_job} without rendering"), second.stdout
    assert "timing" not in second.stdout
    assert lines[2] == first.stdout.splitlines()[1]  # the same video
