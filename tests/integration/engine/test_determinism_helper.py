"""farm.determinism: seeding every RNG and the per-job generator."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from farm.determinism import determinism_state, job_generator, seed_everything
from farm.errors import InvalidInput


def test_seed_everything_seeds_python_numpy_torch_and_returns_a_fresh_cpu_generator() -> None:
    gen = seed_everything(1234, cuda=False)
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)), torch.randn(4, generator=gen))
    gen2 = seed_everything(1234, cuda=False)
    again = (random.random(), float(np.random.rand()), float(torch.rand(1)), torch.randn(4, generator=gen2))
    assert draws[:3] == again[:3]
    assert torch.equal(draws[3], again[3])
    assert gen2.device.type == "cpu" and gen2 is not gen
    assert determinism_state()["deterministic_algorithms"] is True


def test_torch_keeps_only_32_bits_of_a_seed_which_is_why_farm_seeds_are_32_bit() -> None:
    """The fact farm's seed range rests on (farm.spec.MAX_SEED = 2^32-1).

    If a torch release starts using more bits, seeds above 2^32-1 would become distinct renders:
    this fails, and the range (and SPEC_VERSION) must be reconsidered.
    """
    draws = [torch.randn(16, generator=torch.Generator(device="cpu").manual_seed(s)) for s in
             (7, 7 + 2**32, 7 + 2**62)]
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2]), (
        "torch's CPU generator now uses more than 32 bits of a seed: revisit farm.spec.MAX_SEED"
    )
    assert not torch.equal(draws[0], torch.randn(16, generator=torch.Generator(device="cpu").manual_seed(8)))


def test_job_generators_are_independent() -> None:
    a, b = job_generator(7), job_generator(7)
    first = torch.randn(8, generator=a)
    torch.randn(100, generator=job_generator(8))  # another job's draws do not disturb job 7's
    assert torch.equal(first, torch.randn(8, generator=b))
    assert not torch.equal(first, torch.randn(8, generator=job_generator(8)))


@pytest.mark.parametrize("bad", [-1, 2**32, 2**63, 1.0, True, "3"])
def test_invalid_seeds_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInput) as info:
        job_generator(bad)  # type: ignore[arg-type]
    assert info.value.fields == ["seed"]


def test_importing_the_helper_does_not_import_torch() -> None:
    code = "import sys, farm.determinism; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
