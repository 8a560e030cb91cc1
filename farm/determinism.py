"""Seeding every random number generator a render touches, and the deterministic-kernel flags.

torch and numpy are imported inside the functions, so importing this module stays cheap and the
producer side never pulls torch in.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from farm.seeds import check_seed
from farm.settings import set_process_environment

if TYPE_CHECKING:
    import torch

#: cuBLAS workspace that makes its kernels deterministic; must be set before CUDA initialises.
CUBLAS_WORKSPACE = ":16:8"


def enable_deterministic_kernels(cuda: bool) -> None:
    """Torch's full-determinism settings (what diffusers' ``enable_full_determinism`` does).

    On CPU only the deterministic-algorithms flag matters; on CUDA also cuBLAS's workspace,
    cuDNN deterministic with benchmark off, and TF32 off.
    """
    import torch

    if cuda:
        set_process_environment("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=False)


def seed_everything(seed: int, *, cuda: bool | None = None) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and set the deterministic flags.

    Return a fresh CPU ``torch.Generator`` for this job.

    The generator is on the CPU on purpose: the initial noise is drawn there and moved to the
    device, so the same seed gives the same noise on any machine (portable across GPUs).
    """
    check_seed(seed)
    import numpy as np
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    enable_deterministic_kernels(cuda)
    return job_generator(seed)


def job_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``seed`` (one per job; never shared between jobs)."""
    import torch

    check_seed(seed)
    return torch.Generator(device="cpu").manual_seed(seed)


def determinism_state() -> dict[str, Any]:
    """The flags in force, for the environment fingerprint."""
    import torch

    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
    }
