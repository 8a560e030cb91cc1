"""How long the tiny model takes (9 frames, 32x32, profile defaults, one thread).

Reported on the terminal (``-s`` / ``-rA``) and in the test's user properties; the assertion is a
loose upper bound (the target is about 2 s on one core; a shared CI core may be slower).
"""

from __future__ import annotations

import time

import pytest
import torch
from engine_helpers import make_canon

from farm.engine.render import Engine

TARGET_S = 2.0
LIMIT_S = 20.0


def test_tiny_render_time(engine: Engine, record_property: pytest.RecordProperty) -> None:
    assert torch.get_num_threads() == 1
    canon = make_canon(seed=71)
    engine.render([canon])  # warm: model built and caches primed
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = engine.render([canon])[0]
        times.append(time.perf_counter() - start)
    best = min(times)
    record_property("tiny_render_seconds", round(best, 4))
    print(f"\ntiny render (9x32x32, {canon['steps']} steps, CFG, 1 thread): best {best:.3f} s of {times}")
    assert result.frames_shape == (9, 32, 32, 3)
    assert result.stats["batch"]["seconds"].keys() == {"encode", "high_noise", "low_noise", "decode"}
    assert best < LIMIT_S, f"tiny render took {best:.2f} s (target ~{TARGET_S} s)"
