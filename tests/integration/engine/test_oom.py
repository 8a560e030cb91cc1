"""Out of memory inside a render: typed error, retry, degradation, and a process that goes on."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from engine_helpers import make_canon

from farm.engine import memory
from farm.engine.components import Components
from farm.engine.memory import degrade, is_out_of_memory, oom_guard
from farm.engine.render import Engine
from farm.errors import OutOfMemory, TransientError
from farm.profiles import get_profile

CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"
)


@contextmanager
def inject(module: torch.nn.Module, should_fail: Callable[[torch.Tensor], bool],
           make_error: Callable[[], Exception]) -> Iterator[list[weakref.ref[torch.Tensor]]]:
    """A forward pre-hook on ``module`` that raises ``make_error()`` when ``should_fail(latents)``.

    Before raising it allocates a tensor whose weak reference is yielded (to check it is freed).
    """
    refs: list[weakref.ref[torch.Tensor]] = []

    def hook(_m: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        if should_fail(kwargs["hidden_states"]):
            ballast = torch.empty(1 << 20)
            refs.append(weakref.ref(ballast))
            raise make_error()

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield refs
    finally:
        handle.remove()


def once() -> Callable[[torch.Tensor], bool]:
    state = {"n": 0}

    def fail(_latents: torch.Tensor) -> bool:
        state["n"] += 1
        return state["n"] == 1

    return fail


@pytest.fixture
def cleared(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every cache clearing."""
    calls: list[str] = []
    original = memory.clear_caches

    def spy(device: Any = None) -> None:
        calls.append(str(device))
        original(device)

    monkeypatch.setattr(memory, "clear_caches", spy)
    return calls


@pytest.fixture(scope="module")
def expert_engine() -> Engine:
    return Engine(device="cpu", offload="expert", torch_threads=1)


def test_one_oom_is_retried_and_recovers(expert_engine: Engine, tiny: Components, solo: Any,
                                         cleared: list[str]) -> None:
    canon = make_canon(seed=51)
    error = lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")  # noqa: E731
    with inject(tiny.transformer_2, once(), error):
        result = expert_engine.render([canon])[0]
    assert result.stats["attempts"] == 2 and result.stats["oom_stages"] == ["denoise:low_noise"]
    assert result.frames_sha256 == solo(canon).frames_sha256 and not result.degraded
    assert cleared, "caches were cleared"


def test_exhausted_retries_raise_typed_error_then_next_job_renders(
    expert_engine: Engine, tiny: Components, solo: Any, cleared: list[str]
) -> None:
    canon = make_canon(seed=52)
    with (
        inject(tiny.transformer, lambda _: True, lambda: RuntimeError(CPU_OOM)) as refs,
        pytest.raises(OutOfMemory) as info,
    ):
        expert_engine.render([canon])
    err = info.value
    assert isinstance(err, TransientError)
    assert err.stage == "denoise:high_noise" and err.device == "cpu"
    assert "DefaultCPUAllocator" in str(err)
    # the original error is kept as a message only: no traceback keeping the failed frames alive
    assert err.__cause__ is None and err.__suppress_context__
    assert err.__context__ is None or err.__context__.__traceback__ is None
    gc.collect()
    assert len(refs) == 2 and all(r() is None for r in refs), "tensors of the failed attempts were freed"
    assert len(cleared) >= 2
    placement = expert_engine.placement
    assert placement is not None and placement.resident == {"text_encoder", "vae"}  # resting state
    # the same process renders the next job, bit-identical to a clean render
    assert expert_engine.render([canon])[0].frames_sha256 == solo(canon).frames_sha256


def test_degraded_rerender_reports_effective_params(
    expert_engine: Engine, tiny: Components, solo: Any
) -> None:
    canon = make_canon(seed=53, allow_degrade=True)
    full_size = lambda latents: latents.shape[2] == 3  # 9 frames -> 3 latent frames  # noqa: E731
    with inject(tiny.transformer, full_size, lambda: torch.OutOfMemoryError("CUDA out of memory")):
        result = expert_engine.render([canon])[0]
    assert result.degraded and result.stats["degrade_level"] == 1 and result.stats["attempts"] == 3
    assert result.effective_params["num_frames"] == 5
    assert (result.effective_params["width"], result.effective_params["height"]) == (32, 32)
    assert result.frames_shape == (5, 32, 32, 3)
    assert result.frames_sha256 == solo(make_canon(seed=53, allow_degrade=True, num_frames=5)).frames_sha256


def test_no_degradation_without_permission(expert_engine: Engine, tiny: Components) -> None:
    canon = make_canon(seed=54)  # allow_degrade defaults to False
    full_size = lambda latents: latents.shape[2] == 3  # noqa: E731
    with (
        inject(tiny.transformer, full_size, lambda: torch.OutOfMemoryError("CUDA out of memory")),
        pytest.raises(OutOfMemory),
    ):
        expert_engine.render([canon])


def test_other_errors_pass_through(expert_engine: Engine, tiny: Components) -> None:
    with (
        inject(tiny.transformer_2, lambda _: True, lambda: RuntimeError("shape mismatch")),
        pytest.raises(RuntimeError, match="shape mismatch"),
    ):
        expert_engine.render([make_canon(seed=55)])
    placement = expert_engine.placement
    assert placement is not None
    expert_engine.render([make_canon(seed=55)])  # the process goes on
    assert placement.max_experts_resident == 1


def test_oom_guard_and_classifier() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError(CPU_OOM))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float"))
    with pytest.raises(OutOfMemory) as info, oom_guard("decode", "cuda:0"):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
    assert info.value.stage == "decode" and info.value.device == "cuda:0"
    with pytest.raises(ValueError), oom_guard("decode", "cpu"):
        raise ValueError("not memory")


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        ("tiny", (32, 32, 9), (32, 32, 5)),
        ("tiny", (64, 48, 33), (32, 32, 17)),
        ("tiny", (32, 32, 1), (32, 32, 1)),  # already the minimum: unchanged
        ("wan2.2-t2v-a14b", (832, 480, 81), (416, 240, 41)),
        ("wan2.2-ti2v-5b", (1280, 704, 121), (640, 352, 61)),
        ("wan2.2-ti2v-5b", (96, 64, 5), (32, 32, 1)),  # rounded down to 32s
        ("tiny", (48, 32, 9), (32, 32, 5)),  # 24 would be below the 32 px minimum side
    ],
)
def test_degrade(model: str, size: tuple[int, int, int], expected: tuple[int, int, int]) -> None:
    profile = get_profile(model)
    canon = {"model": model, "width": size[0], "height": size[1], "num_frames": size[2], "seed": 1}
    out = degrade(canon)
    assert (out["width"], out["height"], out["num_frames"]) == expected
    assert out["width"] % profile.size_multiple == 0 and out["height"] % profile.size_multiple == 0
    assert (out["num_frames"] - 1) % profile.temporal_multiple == 0
    assert out["seed"] == 1 and canon["width"] == size[0]  # a copy
