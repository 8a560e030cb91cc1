"""The dense (TI2V-5B-shaped) tiny model through the same adapter.

One expert, per-token timesteps (``expand_timesteps``), guidance_scale only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from engine_helpers import count_forwards, make_canon

from farm.engine.components import Components
from farm.engine.render import Engine


@pytest.mark.parametrize("policy", ["model", "expert", "sequential"])
def test_dense_renders_with_one_expert(policy: str, tiny_dense: Components, solo: Any) -> None:
    engine = Engine(device="cpu", offload=policy, torch_threads=1)
    canons = [make_canon(model="tiny-dense", seed=s) for s in (61, 62)]
    with count_forwards(tiny_dense) as counter:
        results = engine.render(canons)
    steps = canons[0]["steps"]
    assert counter.top["transformer"] == 2 * 2 * steps  # two jobs, CFG (guidance 5.0) on every step
    for result, canon in zip(results, canons):
        assert result.frames_shape == (9, 32, 32, 3)
        assert result.stats["steps"] == {"transformer": steps}
        assert result.stats["forwards"] == {"transformer": 2 * steps}
        assert result.frames_sha256 == solo(canon).frames_sha256
    assert results[0].stats["batch"]["segments"] == [("dense", steps)]
    assert results[0].stats["batch"]["swaps"] == 1  # one expert, brought on once for the batch
    assert engine.placement is not None and engine.placement.max_experts_resident == 1


def test_dense_per_token_timesteps(tiny_dense: Components, engine: Engine) -> None:
    seen: list[tuple[int, ...]] = []
    handle = tiny_dense.transformer.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(tuple(kw["timestep"].shape)), with_kwargs=True
    )
    try:
        engine.render([make_canon(model="tiny-dense", seed=63, steps=2, guidance_scale=1.0)])
    finally:
        handle.remove()
    # batch 1, one timestep per latent token: 3 latent frames x (32/16/2)^2 patches
    assert seen == [(1, 3)] * 2


def test_dense_seed_changes_frames(solo: Any) -> None:
    a = solo(make_canon(model="tiny-dense", seed=61))
    b = solo(make_canon(model="tiny-dense", seed=64))
    assert a.frames is not None and b.frames is not None
    assert a.frames_sha256 != b.frames_sha256 and not np.array_equal(a.frames, b.frames)
