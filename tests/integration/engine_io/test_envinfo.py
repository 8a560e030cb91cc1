"""The environment fingerprint."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest

from farm.engine import envinfo


def test_fields_and_versions() -> None:
    import torch

    from farm.determinism import determinism_state

    fp = envinfo.environment_fingerprint()
    for name in ("torch", "diffusers", "transformers", "tokenizers", "numpy", "imageio_ffmpeg", "pillow"):
        assert fp[name] == metadata.version(name.replace("_", "-")), name
    assert fp["python"] == ".".join(str(n) for n in sys.version_info[:3])
    assert fp["ffmpeg"].startswith("ffmpeg version ")
    assert fp["torch_imported"] is True
    assert fp["determinism"] == determinism_state()
    assert fp["torch_num_threads"] == torch.get_num_threads()
    assert fp["cuda"] == torch.version.cuda
    assert fp["cuda_available"] == torch.cuda.is_available()
    assert len(fp["env_digest"]) == envinfo.ENV_DIGEST_CHARS
    json.dumps(fp, allow_nan=False)  # JSON-ready


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only answer")
def test_no_gpu_fields_without_cuda() -> None:
    fp = envinfo.environment_fingerprint()
    assert fp["gpu_count"] is None and fp["gpu_names"] is None and fp["cudnn"] is None


def test_env_digest_covers_exactly_the_frame_affecting_fields() -> None:
    fp = envinfo.environment_fingerprint()
    assert envinfo.env_digest(fp) == fp["env_digest"] == envinfo.environment_fingerprint()["env_digest"]
    for field, value in (("torch", "0.0.0"), ("diffusers", "0.1"), ("gpu_names", ["NVIDIA H100"]),
                         ("torch_num_threads", 999), ("determinism", {"deterministic_algorithms": True}),
                         ("cuda", "12.8"), ("machine", "aarch64")):
        assert envinfo.env_digest({**fp, field: value}) != fp["env_digest"], field
    for field, value in (("ffmpeg", "ffmpeg version other"), ("platform", "elsewhere"),
                         ("process_env", {"X": "1"}), ("pillow", "1.0")):
        assert envinfo.env_digest({**fp, field: value}) == fp["env_digest"], field


def test_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2-secret-value")
    monkeypatch.setenv("FARM_DATABASE_URL", "postgresql://u:pw-secret-value@db/farm")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    fp = envinfo.environment_fingerprint()
    text = json.dumps(fp)
    assert "secret-value" not in text
    assert fp["process_env"] == {"OMP_NUM_THREADS": "2"} or "OMP_NUM_THREADS" in fp["process_env"]
    assert set(fp["process_env"]) <= {"CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED",
                                      "OMP_NUM_THREADS"}


def test_does_not_import_torch() -> None:
    code = (
        "import json, sys\n"
        "from farm.engine.envinfo import environment_fingerprint\n"
        "fp = environment_fingerprint()\n"
        "print(json.dumps({'torch_loaded': 'torch' in sys.modules, 'fp': fp}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    data = json.loads(out.stdout)
    assert data["torch_loaded"] is False
    assert data["fp"]["torch_imported"] is False
    assert data["fp"]["cuda_available"] is None and data["fp"]["determinism"] is None
    assert data["fp"]["torch"] == metadata.version("torch")
