"""Expert-phase batching: K compatible jobs share the expert swaps and keep their own frames."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from engine_helpers import count_forwards, make_canon

from farm.engine.components import Components
from farm.engine.render import Engine
from farm.engine.wan import compatibility_key


@pytest.fixture(scope="module")
def expert_engine() -> Engine:
    return Engine(device="cpu", offload="expert", torch_threads=1)


def batch_canons() -> list[dict[str, Any]]:
    return [
        make_canon(seed=101),
        make_canon(seed=2**32 - 7, prompt="a red car driving through the city at night"),
        make_canon(seed=5, guidance_scale=5.0, guidance_scale_2=1.0, negative_prompt="blurry"),
    ]


def test_three_jobs_match_solo_with_two_swaps(expert_engine: Engine, solo: Any, tiny: Components) -> None:
    canons = batch_canons()
    solo_hashes = [solo(c).frames_sha256 for c in canons]
    assert len(set(solo_hashes)) == 3
    order: list[str] = []
    handles = [
        tiny.transformer.register_forward_pre_hook(lambda *_: order.append("transformer")),
        tiny.transformer_2.register_forward_pre_hook(lambda *_: order.append("transformer_2")),
    ]
    try:
        results = expert_engine.render(canons)
    finally:
        for h in handles:
            h.remove()
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.frames_sha256 for r in results] == solo_hashes
    assert all(not r.cancelled and not r.degraded for r in results)
    batch = results[0].stats["batch"]
    assert batch["size"] == 3 and batch["swaps"] == 2  # instead of 3 x 2 = 6 solo
    assert batch["transfers"]["max_experts_resident"] == 1
    # the high-noise phase of all three jobs runs before any low-noise forward: one switch
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches == 1 and order[0] == "transformer"
    # per-job statistics: the third job has no CFG in the low-noise phase
    n_high = results[0].stats["steps"]["transformer"]
    n_low = results[0].stats["steps"]["transformer_2"]
    assert results[2].stats["forwards"] == {"transformer": 2 * n_high, "transformer_2": n_low}
    assert results[1].stats["forwards"] == {"transformer": 2 * n_high, "transformer_2": 2 * n_low}


def test_solo_renders_cost_two_swaps_each(expert_engine: Engine) -> None:
    canons = batch_canons()
    swaps = [expert_engine.render([c])[0].stats["batch"]["swaps"] for c in canons]
    assert swaps == [2, 2, 2]


def test_model_policy_batch_also_two_swaps(solo: Any) -> None:
    engine = Engine(device="cpu", offload="model", torch_threads=1)
    canons = batch_canons()[:2]
    with count_forwards(engine.load("tiny")) as counter:
        results = engine.render(canons)
    assert results[0].stats["batch"]["swaps"] == 2
    assert [r.frames_sha256 for r in results] == [solo(c).frames_sha256 for c in canons]
    assert counter.top["text_encoder"] == 4  # prompt and negative prompt of each job, batch size 1 each


def test_compatibility_key() -> None:
    a, b = make_canon(seed=1), make_canon(seed=2, prompt="a dog", guidance_scale=7.0)
    assert compatibility_key(a) == compatibility_key(b)
    key = dict(compatibility_key(a))
    assert set(key) == {
        "model", "width", "height", "num_frames", "steps", "sampler", "flow_shift", "boundary_ratio",
        "cache_threshold",
    }
    for change in ({"width": 48}, {"num_frames": 5}, {"steps": 4}, {"sampler": "euler"}, {"flow_shift": 5.0},
                   {"boundary_ratio": 0.5}):
        assert compatibility_key(make_canon(**change)) != compatibility_key(a), change
