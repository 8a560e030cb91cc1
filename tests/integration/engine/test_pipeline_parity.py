"""farm's own denoising loop against ``WanPipeline.__call__``: bit-identical for K = 1.

Both run the same components, the same scheduler settings and a fresh CPU generator seeded with
the job's seed; the pipeline returns ``output_type="np"`` (float32 in [0, 1]). The adapter's
``output_type="np"`` returns the same float frames; the engine's uint8 frames are their
truncation ``(x * 255).astype(uint8)`` (what ``export_to_video`` writes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import WanPipeline
from engine_helpers import make_canon

from farm.engine.components import Components
from farm.engine.placement import Placement
from farm.engine.render import Engine
from farm.engine.wan import MAX_SEQUENCE_LENGTH, WanAdapter, make_scheduler


def pipeline_frames(components: Components, canon: dict[str, Any]) -> np.ndarray:
    pipe = WanPipeline(
        tokenizer=components.tokenizer,
        text_encoder=components.text_encoder,
        vae=components.vae,
        scheduler=make_scheduler(canon["sampler"], canon["flow_shift"], components.scheduler),
        transformer=components.transformer,
        transformer_2=components.transformer_2,
        boundary_ratio=canon["boundary_ratio"],
        expand_timesteps=components.expand_timesteps,
    )
    pipe.set_progress_bar_config(disable=True)
    extra = {} if canon["guidance_scale_2"] is None else {"guidance_scale_2": canon["guidance_scale_2"]}
    out = pipe(
        prompt=canon["prompt"],
        negative_prompt=canon["negative_prompt"],
        height=canon["height"],
        width=canon["width"],
        num_frames=canon["num_frames"],
        num_inference_steps=canon["steps"],
        guidance_scale=canon["guidance_scale"],
        generator=torch.Generator(device="cpu").manual_seed(canon["seed"]),
        output_type="np",
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        **extra,
    )
    return out.frames[0]


@pytest.mark.parametrize(
    "fields",
    [
        {},  # the tiny profile's defaults: UniPC, 8 steps, boundary 0.875, guidance (4.0, 3.0)
        {"seed": 12345, "negative_prompt": "blurry, low quality", "sampler": "euler", "steps": 5},
        {"seed": 7, "guidance_scale": 1.0, "guidance_scale_2": 1.0, "width": 48, "num_frames": 5},
    ],
)
def test_two_expert_matches_wan_pipeline(tiny: Components, engine: Engine, fields: dict[str, Any]) -> None:
    canon = make_canon(**fields)
    expected = pipeline_frames(tiny, canon)
    adapter = WanAdapter(tiny, Placement("cpu", "none"))
    got = adapter.render([canon], output_type="np")[0].frames
    assert got is not None and got.dtype == np.float32
    assert got.shape == expected.shape == (canon["num_frames"], canon["height"], canon["width"], 3)
    assert np.array_equal(got, expected), f"max |diff| = {np.abs(got - expected).max()}"
    # the engine's uint8 frames are the truncation of the same floats
    result = engine.render([canon])[0]
    assert result.frames is not None and result.frames.dtype == np.uint8
    assert np.array_equal(result.frames, (expected * 255).astype(np.uint8))


def test_dense_matches_wan_pipeline_with_expand_timesteps(tiny_dense: Components, engine: Engine) -> None:
    canon = make_canon(model="tiny-dense", seed=3)
    assert canon["boundary_ratio"] is None and canon["guidance_scale_2"] is None
    expected = pipeline_frames(tiny_dense, canon)
    got = WanAdapter(tiny_dense, Placement("cpu", "none")).render([canon], output_type="np")[0].frames
    assert got is not None and np.array_equal(got, expected)
    result = engine.render([canon])[0]
    assert result.frames is not None
    assert np.array_equal(result.frames, (expected * 255).astype(np.uint8))
