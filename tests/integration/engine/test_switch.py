"""The expert switch: which expert runs each step, and how many forwards it makes.

The expected numbers are computed here independently of the engine, from a scheduler built
directly with diffusers and WanPipeline's rule (``t >= boundary_ratio * num_train_timesteps`` →
high-noise expert); the forwards are counted with forward hooks on the experts.
"""

from __future__ import annotations

from typing import Any

import pytest
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from engine_helpers import count_forwards, make_canon

from farm.engine.components import Components
from farm.engine.render import Engine


def expected_high_steps(sampler: str, steps: int, shift: float, boundary: float) -> int:
    if sampler == "unipc":
        scheduler: Any = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
        )
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    threshold = boundary * scheduler.config.num_train_timesteps
    flags = [bool(t >= threshold) for t in scheduler.timesteps]
    assert flags == sorted(flags, reverse=True), "high-noise steps come first"
    return sum(flags)


CASES = [
    # sampler, steps, flow_shift, boundary, guidance (high, low)
    ("unipc", 8, 3.0, 0.875, (4.0, 3.0)),  # the tiny profile's defaults
    ("euler", 6, 3.0, 0.5, (4.0, 3.0)),
    ("unipc", 5, 12.0, 0.9, (3.5, 3.5)),
    ("unipc", 6, 3.0, 0.875, (4.0, 1.0)),  # no CFG for the low-noise expert
    ("euler", 4, 5.0, 0.7, (1.0, 2.5)),  # no CFG for the high-noise expert
]


@pytest.mark.parametrize(("sampler", "steps", "shift", "boundary", "guidance"), CASES)
def test_steps_and_forwards_per_expert(
    engine: Engine,
    tiny: Components,
    sampler: str,
    steps: int,
    shift: float,
    boundary: float,
    guidance: tuple[float, float],
) -> None:
    canon = make_canon(
        sampler=sampler, steps=steps, flow_shift=shift, boundary_ratio=boundary,
        guidance_scale=guidance[0], guidance_scale_2=guidance[1],
    )
    n_high = expected_high_steps(sampler, steps, shift, boundary)
    n_low = steps - n_high
    assert 0 < n_high < steps, "the case must exercise the switch"
    per_step = [2 if g > 1.0 else 1 for g in guidance]
    order: list[str] = []
    handles = [
        tiny.transformer.register_forward_pre_hook(lambda *_: order.append("transformer")),
        tiny.transformer_2.register_forward_pre_hook(lambda *_: order.append("transformer_2")),
    ]
    try:
        with count_forwards(tiny) as counter:
            result = engine.render([canon])[0]
    finally:
        for h in handles:
            h.remove()
    assert counter.top["transformer"] == n_high * per_step[0]
    assert counter.top["transformer_2"] == n_low * per_step[1]
    # every high-noise forward comes before every low-noise one
    assert order == ["transformer"] * (n_high * per_step[0]) + ["transformer_2"] * (n_low * per_step[1])
    stats = result.stats
    assert stats["steps"] == {"transformer": n_high, "transformer_2": n_low}
    assert stats["forwards"] == {"transformer": n_high * per_step[0], "transformer_2": n_low * per_step[1]}
    assert stats["guidance"] == {"transformer": guidance[0], "transformer_2": guidance[1]}


def test_low_noise_guidance_changes_only_what_it_should(engine: Engine, solo: Any) -> None:
    base = solo(make_canon())
    other = engine.render([make_canon(guidance_scale_2=2.0)])[0]
    assert other.stats["guidance"]["transformer_2"] == 2.0
    assert other.frames_sha256 != base.frames_sha256
    # the same job again is the same frames (the cache is bypassed: a new render)
    again = engine.render([make_canon()])[0]
    assert again.frames_sha256 == base.frames_sha256


def test_boundary_moves_the_switch(engine: Engine, tiny: Components) -> None:
    low = make_canon(boundary_ratio=0.5)
    high = make_canon(boundary_ratio=0.95)
    with count_forwards(tiny) as c_low:
        engine.render([low])
    with count_forwards(tiny) as c_high:
        engine.render([high])
    assert c_low.top["transformer"] > c_high.top["transformer"]
    assert c_low.top["transformer"] + c_low.top["transformer_2"] == 16
    assert c_high.top["transformer"] + c_high.top["transformer_2"] == 16
