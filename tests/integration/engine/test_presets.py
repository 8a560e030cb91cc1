"""Speed presets on the engine: draft and custom cache steps, deterministically; final stays exact.

``final`` renders as before (no cache hooks, not even after a cached render); ``draft`` takes the
profile's draft steps and its cache threshold and skips transformer work; the skipped forwards
are in the stats; a cached render is the same alone and in a phase batch (each job has its own
cache context) and the same when rendered again. (Across fresh processes:
``test_determinism_processes.py``.)
"""

from __future__ import annotations

from typing import Any

import pytest
from engine_helpers import count_forwards, make_canon

from farm.engine.components import Components
from farm.engine.render import Engine
from farm.profiles import PROFILES

TINY = PROFILES["tiny"]


def test_final_is_exact_and_uncached(engine: Engine, solo: Any, tiny: Components) -> None:
    canon = make_canon()
    assert canon["preset"] == "final" and canon["cache_threshold"] is None and canon["steps"] == TINY.steps
    result = engine.render([canon])[0]
    assert "cache" not in result.stats
    assert result.frames_sha256 == solo(canon).frames_sha256


def test_draft_takes_the_profiles_draft_steps_and_skips_transformer_work(engine: Engine, tiny: Components) -> None:
    canon = make_canon(preset="draft")
    assert canon["steps"] == TINY.draft_steps < TINY.steps
    assert canon["cache_threshold"] == TINY.draft_cache_threshold
    with count_forwards(tiny) as counter:
        result = engine.render([canon])[0]
    cache = result.stats["cache"]
    assert cache["method"] == "first_block_cache" and cache["threshold"] == TINY.draft_cache_threshold
    assert sum(cache["skipped"].values()) > 0
    # the experts' top-level forwards still happen (the first block runs); skipped ones end early
    assert counter.top["transformer"] == result.stats["forwards"]["transformer"]
    assert result.frames_sha256 == engine.render([canon])[0].frames_sha256  # deterministic


def test_no_cache_hook_outlives_a_cached_render(engine: Engine, solo: Any, tiny: Components) -> None:
    before = solo(make_canon(seed=9)).frames_sha256
    engine.render([make_canon(preset="draft", seed=9)])
    assert not tiny.transformer.is_cache_enabled and not tiny.transformer_2.is_cache_enabled
    assert engine.render([make_canon(seed=9)])[0].frames_sha256 == before


def test_a_cached_render_is_the_same_alone_and_in_a_phase_batch(engine: Engine) -> None:
    canons = [make_canon(preset="draft", seed=s, prompt=p) for s, p in ((1, "a red cat"), (2, "a blue dog"))]
    alone = [engine.render([c])[0] for c in canons]
    batched = engine.render(canons)
    assert [r.frames_sha256 for r in batched] == [r.frames_sha256 for r in alone]
    assert [r.stats["cache"] for r in batched] == [r.stats["cache"] for r in alone]


@pytest.mark.parametrize("threshold", [0.05, 0.2, 1.0])
def test_custom_thresholds_skip_more_as_they_grow(engine: Engine, threshold: float) -> None:
    skipped = {}
    for t in (threshold / 2, threshold):
        result = engine.render([make_canon(preset="custom", cache_threshold=t)])[0]
        skipped[t] = sum(result.stats["cache"]["skipped"].values())
        assert result.stats["steps_done"] == TINY.steps  # custom keeps the steps; only the cache differs
    assert skipped[threshold / 2] <= skipped[threshold]


def test_a_cached_render_differs_from_final(engine: Engine, solo: Any) -> None:
    cached = engine.render([make_canon(preset="custom", cache_threshold=0.5)])[0]
    assert sum(cached.stats["cache"]["skipped"].values()) > 0
    assert cached.frames_sha256 != solo(make_canon()).frames_sha256
