"""The environment fingerprint recorded with every job.

Library versions, the ffmpeg build, the accelerator, the determinism flags, and ``env_digest``, a
short hash of the fields that can change the frames (two renders with equal job keys and equal
``env_digest`` must give equal frames).

Safe to call anywhere:

* versions are read from package metadata, so calling this never imports torch;
* CUDA is only asked about when torch is already imported (by the engine), and GPU names are only
  read when CUDA is already initialised or the caller allows it (``init_cuda=True``): reading
  device properties creates a CUDA context, after which a forked child cannot use CUDA;
* no secrets: never the whole environment, only :func:`farm.settings.process_environment`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from importlib import metadata
from typing import Any

from farm.settings import process_environment

#: Version of the fingerprint's layout; part of ``env_digest``.
#: farm.env/2 added ``device`` (the device type the render ran on) to the digested fields.
ENV_FINGERPRINT_FORMAT = "farm.env/2"
#: Distributions whose versions are recorded.
PACKAGES: tuple[str, ...] = (
    "torch", "diffusers", "transformers", "tokenizers", "accelerate", "safetensors", "numpy",
    "imageio", "imageio-ffmpeg", "pillow",
)
#: Fields that can change the frames; ``env_digest`` hashes exactly these (the ffmpeg and Pillow
#: builds change the file bytes, not the frames, and are recorded but not digested).
DIGEST_FIELDS: tuple[str, ...] = (
    "format", "machine", "python", "torch", "diffusers", "transformers", "tokenizers", "numpy",
    "cuda", "cudnn", "gpu_names", "determinism", "torch_num_threads", "device",
)
#: Hex characters of the sha256 kept as ``env_digest``.
ENV_DIGEST_CHARS = 16


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _torch_facts(init_cuda: bool) -> dict[str, Any]:
    """What torch can tell without side effects; empty values when torch is not imported."""
    torch = sys.modules.get("torch")
    facts: dict[str, Any] = {
        "torch_imported": torch is not None,
        "cuda": None,
        "cudnn": None,
        "cuda_available": None,
        "gpu_count": None,
        "gpu_names": None,
        "determinism": None,
        "torch_num_threads": None,
    }
    if torch is None:
        return facts
    from farm.determinism import determinism_state

    facts["cuda"] = torch.version.cuda
    try:
        facts["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except RuntimeError:
        facts["cudnn"] = None
    facts["determinism"] = determinism_state()
    facts["torch_num_threads"] = torch.get_num_threads()
    available = bool(torch.cuda.is_available())
    facts["cuda_available"] = available
    if available:
        facts["gpu_count"] = torch.cuda.device_count()
        if init_cuda or torch.cuda.is_initialized():
            facts["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(facts["gpu_count"])]
    return facts


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def env_digest(fingerprint: dict[str, Any]) -> str:
    """Short sha256 of the frame-affecting fields of an environment fingerprint."""
    subset = {k: fingerprint.get(k) for k in DIGEST_FIELDS}
    return hashlib.sha256(_canonical(subset).encode("utf-8")).hexdigest()[:ENV_DIGEST_CHARS]


def environment_fingerprint(*, init_cuda: bool = False, device: str | None = None) -> dict[str, Any]:
    """The environment a render runs in, as a JSON-ready dict with an ``env_digest``.

    ``device``: the torch device the renders run on; its type (``cpu``, ``cuda``) is recorded.
    """
    from farm.store.encode import ffmpeg_version_line

    versions = {name: package_version(name) for name in PACKAGES}
    out: dict[str, Any] = {
        "format": ENV_FINGERPRINT_FORMAT,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        **{name.replace("-", "_"): version for name, version in versions.items()},
        "ffmpeg": ffmpeg_version_line(),
        "process_env": process_environment(),
        "device": None if device is None else device.split(":", 1)[0],
        **_torch_facts(init_cuda),
    }
    out["env_digest"] = env_digest(out)
    return dict(sorted(out.items()))
