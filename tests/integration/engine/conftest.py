"""Fixtures of the render engine tests.

The tiny models, one warm engine per session, solo renders cached by job key (helpers:
``engine_helpers``).

Every render here is the built-in tiny model at 32x32, 9 frames and the profile's 8 steps (or
fewer), on one CPU thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from farm.engine.components import Components
from farm.engine.render import Engine, RenderResult
from farm.engine.tiny import build_builtin
from farm.spec import parse_spec

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny() -> Components:
    return build_builtin("tiny")


@pytest.fixture(scope="session")
def tiny_dense() -> Components:
    return build_builtin("tiny-dense")


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The session's warm engine: CPU, no offloading, one thread."""
    return Engine(device="cpu", offload="none", torch_threads=1)


@pytest.fixture(scope="session")
def solo(engine: Engine) -> Callable[[dict[str, Any]], RenderResult]:
    """Render one job alone (K = 1) with the session engine; cached by job key."""
    cache: dict[str, RenderResult] = {}

    def render(canon: dict[str, Any]) -> RenderResult:
        key = parse_spec(canon).job_key
        if key not in cache:
            cache[key] = engine.render([canon])[0]
        return cache[key]

    return render
