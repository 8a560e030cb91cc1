"""farm's render loop against diffusers' own ``WanPipeline``, built independently.

The reference is ``WanPipeline.from_pretrained(directory)``: a Diffusers-format directory saved
with ``save_pretrained``, loaded by diffusers with the scheduler diffusers itself saved and
restores (no farm code builds any part of it). farm loads the same directory with
:func:`farm.engine.weights.load_components` and renders with its own loop (``WanAdapter``: its
scheduler from ``make_scheduler``, its own expert switch and guidance). The float frames
(``output_type="np"``) must be bit-identical, for:

* both experts guided with different scales (4.0 / 3.0) and both unguided (1.0 / 1.0);
* the UniPC and the flow-match Euler scheduler (each from its own saved directory);
* a boundary that falls exactly on a timestep (that step belongs to the high-noise expert);
* a model wider than tiny (VAE base_dim 32, wider experts).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline

from farm.engine.components import Components
from farm.engine.placement import Placement
from farm.engine.wan import WanAdapter
from farm.engine.weights import load_components
from farm.profiles import ModelProfile
from farm.spec import parse_spec

from .conftest import TINY_SUBDIR, WIDE_SUBDIR, save_pipeline, tiny_profile

PROMPT, NEGATIVE = "a red dog runs in the rain at night", "blue city"


def profile_for(subdir: str, **changes: Any) -> ModelProfile:
    return dataclasses.replace(tiny_profile(subdir), **changes)


def reference_frames(directory: Path, canon: dict[str, Any]) -> np.ndarray:
    """The reference, diffusers alone: the saved pipeline, its own scheduler, WanPipeline.__call__."""
    pipe = WanPipeline.from_pretrained(directory, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    # Weights out of the memory-mapped file into ordinary memory (what farm's loader does too):
    # tensors left at the file's unaligned offsets send CPU kernels down other paths, and the
    # frames then depend on the file layout by ~1e-7 (seen here: the tiny directory's frames).
    for name in ("text_encoder", "vae", "transformer", "transformer_2"):
        for tensor in [*getattr(pipe, name).parameters(), *getattr(pipe, name).buffers()]:
            tensor.data = tensor.data.clone()
    assert pipe.config.boundary_ratio == canon["boundary_ratio"]
    out = pipe(
        prompt=canon["prompt"], negative_prompt=canon["negative_prompt"], height=canon["height"],
        width=canon["width"], num_frames=canon["num_frames"], num_inference_steps=canon["steps"],
        guidance_scale=canon["guidance_scale"], guidance_scale_2=canon["guidance_scale_2"],
        generator=torch.Generator(device="cpu").manual_seed(canon["seed"]), output_type="np",
    )
    frames: np.ndarray = out.frames[0]
    return frames


def farm_frames(components: Components, canon: dict[str, Any]) -> np.ndarray:
    result = WanAdapter(components, Placement("cpu", "none")).render([canon], output_type="np")[0]
    assert result.frames is not None
    return result.frames


def canon_of(**fields: Any) -> dict[str, Any]:
    data = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": 42, "model": "tiny", "steps": 6, **fields}
    return parse_spec(data).canonical()


def assert_same(directory: Path, profile: ModelProfile, canon: dict[str, Any]) -> None:
    components = load_components(profile, directory.parent, "float32")
    expected = reference_frames(directory, canon)
    got = farm_frames(components, canon)
    assert got.shape == expected.shape == (canon["num_frames"], canon["height"], canon["width"], 3)
    assert np.array_equal(got, expected), f"max |diff| = {np.abs(got - expected).max()}"


@pytest.mark.parametrize("guidance", [(4.0, 3.0), (1.0, 1.0)], ids=["both-guided", "both-unguided"])
def test_unipc_directory(models_path: Path, guidance: tuple[float, float]) -> None:
    directory = models_path / TINY_SUBDIR  # (a private copy: loading writes the fingerprint cache)
    canon = canon_of(guidance_scale=guidance[0], guidance_scale_2=guidance[1])
    assert canon["sampler"] == "unipc"
    assert_same(directory, profile_for(directory.name), canon)


def test_euler_directory(tmp_path: Path) -> None:
    directory = save_pipeline(tmp_path, "Euler-T2V-Diffusers", sampler="euler", flow_shift=3.0)
    assert_same(directory, profile_for(directory.name, sampler="euler"), canon_of(sampler="euler"))


def boundary_on_a_timestep(steps: int) -> tuple[float, int]:
    """A boundary ratio whose boundary timestep is exactly one of the scheduler's timesteps."""
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    scheduler.set_timesteps(steps)
    train = scheduler.config.num_train_timesteps
    for k in range(1, steps - 1):  # a middle step: both experts run
        t = float(scheduler.timesteps[k])
        ratio = t / train
        if ratio * train == t:
            return ratio, k
    raise AssertionError("no timestep gives an exact boundary")


def test_boundary_exactly_on_a_timestep(tmp_path: Path) -> None:
    ratio, k = boundary_on_a_timestep(6)
    directory = save_pipeline(tmp_path, "Edge-T2V-Diffusers", boundary_ratio=ratio)
    profile = profile_for(directory.name, boundary_ratio=ratio)
    canon = canon_of(boundary_ratio=ratio)
    # the edge is real: step k's timestep equals the boundary, so (t >= boundary) gives it to the
    # high-noise expert; k + 1 high-noise steps
    components = load_components(profile, directory.parent, "float32")
    adapter = WanAdapter(components, Placement("cpu", "none"))
    result = adapter.render([canon], output_type="np")[0]
    assert result.stats["steps"] == {"transformer": k + 1, "transformer_2": 6 - k - 1}
    expected = reference_frames(directory, canon)
    assert result.frames is not None and np.array_equal(result.frames, expected)


def test_a_model_wider_than_tiny(wide_models: Path) -> None:
    canon = canon_of(width=64, height=64, num_frames=9, steps=3)
    assert_same(wide_models / WIDE_SUBDIR, profile_for(WIDE_SUBDIR), canon)
