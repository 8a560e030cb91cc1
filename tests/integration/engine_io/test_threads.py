"""Frames depend on torch's CPU thread count; farm fixes it, records it and names it.

With the wide model (a VAE with base_dim 32, dim_mult 1,2,4,4; 128x128, 17 frames), one and two threads give other
frames (the VAE's ``conv3d`` sums in another order), in fresh processes, while the same thread
count gives the same frames whatever ``PYTHONHASHSEED`` is. The environment fingerprint records the
count, and the re-render explanation names it as the cause.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from farm.client.reports import env_differences, explain
from farm.engine.envinfo import DIGEST_FIELDS
from farm.settings import DEFAULT_TORCH_THREADS, Settings

from .conftest import WIDE_SUBDIR

RENDER = """
import dataclasses, json, sys
from pathlib import Path
from farm.engine.envinfo import environment_fingerprint
from farm.engine.placement import Placement
from farm.engine.render import Engine
from farm.engine.wan import WanAdapter
from farm.engine.weights import load_components
from farm.profiles import PROFILES
from farm.spec import parse_spec
from farm.store.encode import frames_sha256
import numpy as np

models, subdir, threads = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
profile = dataclasses.replace(PROFILES["tiny"], source="directory", weights_subdir=subdir,
                              required_files=PROFILES["wan2.2-t2v-a14b"].required_files)
Engine(device="cpu", torch_threads=threads)  # the engine sets the thread count and the determinism flags
components = load_components(profile, models, "float32")
canon = parse_spec({"prompt": "a red dog runs in the rain", "seed": 11, "model": "tiny", "width": 128,
                    "height": 128, "num_frames": 17, "steps": 2}).canonical()
floats = WanAdapter(components, Placement("cpu", "none")).render([canon], output_type="np")[0].frames
print(json.dumps({"frames_sha256": frames_sha256((floats * 255).astype(np.uint8)),
                  "env": environment_fingerprint(device="cpu")}))
"""


def render_in_fresh_process(models: Path, threads: int, hash_seed: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    proc = subprocess.run([sys.executable, "-c", RENDER, str(models), WIDE_SUBDIR, str(threads)],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_default_thread_count_is_fixed_not_the_machines() -> None:
    assert Settings().torch_threads == DEFAULT_TORCH_THREADS == 1
    assert Settings(torch_threads=4).torch_threads == 4


@pytest.mark.slow
def test_thread_count_changes_frames_and_the_fingerprint_names_it(wide_models: Path) -> None:
    one = render_in_fresh_process(wide_models, 1, "1")
    one_again = render_in_fresh_process(wide_models, 1, "2")
    two = render_in_fresh_process(wide_models, 2, "3")
    assert one["frames_sha256"] == one_again["frames_sha256"]  # same threads: same frames, any hash seed
    assert one["frames_sha256"] != two["frames_sha256"], "1 and 2 threads gave the same frames"
    assert one["env"]["torch_num_threads"] == 1 and two["env"]["torch_num_threads"] == 2
    assert one["env"]["env_digest"] != two["env"]["env_digest"]
    diffs = env_differences(one["env"], two["env"])
    digest_diffs = [d.field for d in diffs if d.field.split(".")[1] in DIGEST_FIELDS]
    assert digest_diffs == ["env.torch_num_threads"]  # the only frame-affecting difference
    causes = explain(diffs)
    assert causes and causes[0].startswith("torch CPU threads: 1 -> 2") and "FARM_TORCH_THREADS" in causes[0]
