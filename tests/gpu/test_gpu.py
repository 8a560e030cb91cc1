"""Real device placement on CUDA (opt-in: ``FARM_TEST_GPU=1`` on a machine with a GPU)."""

from __future__ import annotations

import os

import pytest
import torch
from engine_helpers import EXPERTS, make_canon

from farm.engine.placement import POLICIES
from farm.engine.render import Engine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        os.environ.get("FARM_TEST_GPU") != "1" or not torch.cuda.is_available(),
        reason="GPU tests are opt-in: FARM_TEST_GPU=1 on a CUDA machine",
    ),
]


def devices(module: torch.nn.Module) -> set[str]:
    return {p.device.type for p in module.parameters()}


def test_policies_on_cuda_same_frames_real_residency() -> None:
    canons = [make_canon(seed=s) for s in (1, 2)]
    hashes: dict[str, list[str | None]] = {}
    for policy in POLICIES:  # sequential last: it installs group offloading hooks
        engine = Engine(device="cuda", offload=policy, torch_threads=1)
        components = engine.load("tiny")
        results = engine.render(canons)
        hashes[policy] = [r.frames_sha256 for r in results]
        placement = engine.placement
        assert placement is not None and not placement.simulated
        assert results[0].stats["batch"]["swaps"] == (0 if policy == "none" else 2)
        assert placement.max_experts_resident == (2 if policy == "none" else 1)
        if policy == "expert":
            assert devices(components.transformer_2) == {"cuda"}  # the last expert used stays
            assert devices(components.transformer) == {"cpu"}
            assert all(p.is_pinned() for p in components.transformer.parameters())
            assert devices(components.vae) == {"cuda"}
        if policy == "model":
            assert devices(components.vae) == {"cuda"}
            for name in ("text_encoder", *EXPERTS):
                assert devices(getattr(components, name)) == {"cpu"}
        if policy == "sequential":
            for name in EXPERTS:
                assert devices(getattr(components, name)) == {"cpu"}
        engine.unload()
        for name, module in components.modules().items():
            assert devices(module) == {"cpu"}, name
    assert len({tuple(h) for h in hashes.values()}) == 1, hashes
