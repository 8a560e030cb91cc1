"""Memory hygiene for renders.

No autograd, caches cleared after each job, out-of-memory errors turned into
:class:`farm.errors.OutOfMemory`, and the degraded re-render parameters.

* :func:`oom_guard` wraps a render stage: a ``torch.OutOfMemoryError`` (CUDA) or the CPU
  allocator's ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory") raised inside becomes
  ``OutOfMemory(stage=..., device=...)``, raised only after the failing frames were released and
  the caches cleared, so the process can go on to the next job.
* :func:`degrade` halves a job's size and frame count, respecting the model's multiples, for jobs
  that allow degradation.
"""

from __future__ import annotations

import gc
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from farm.errors import OutOfMemory
from farm.profiles import ModelProfile, get_profile
from farm.spec import MIN_SIDE_PX

#: Substrings of allocator failures that do not come as ``torch.OutOfMemoryError``.
_OOM_MESSAGES = (
    "DefaultCPUAllocator: can't allocate memory",
    "CUDA out of memory",
    "CUDA error: out of memory",
    "out of memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's OOM error and the allocators' out-of-memory ``RuntimeError``s."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MESSAGES)


def settle_heap() -> None:
    """After a model is loaded: collect once, then ``gc.freeze``.

    Every object alive now (the libraries, the model's modules) moves out of the collector's
    view. The collection after each job then walks only what that job created — a full walk of
    the loaded libraries took ~0.2 s per job on the CPU for the tiny model. Frozen objects stay
    alive as they would anyway.
    """
    gc.collect()
    gc.freeze()


def unsettle_heap() -> None:
    """Before a model is dropped: give frozen objects back to the collector (``gc.unfreeze``).

    The old model's cycles are then collected.
    """
    gc.unfreeze()


def clear_caches(device: str | torch.device | None = None) -> None:
    """Collect garbage and release the accelerator's cached blocks."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()


@contextmanager
def oom_guard(stage: str, device: str | torch.device) -> Iterator[None]:
    """Turn an out-of-memory error raised inside into ``OutOfMemory(stage, device)``.

    The original exception's frames are released (:func:`release_frames`) and the caches emptied
    before the typed error is raised (``from None``: the original is kept only as a message-bearing
    ``__context__`` without traceback); other errors pass through.
    """
    summary = None
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        summary = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        release_frames(exc)
        del exc
    if summary is not None:
        clear_caches(device)
        raise OutOfMemory(
            f"out of memory on {device} during {stage}: {summary}", stage=stage, device=str(device)
        ) from None


def release_frames(exc: BaseException) -> None:
    """Drop the local variables of the finished frames in ``exc``'s traceback, then the traceback itself.

    The same for its chained exceptions: an out-of-memory error must not keep the tensors that
    filled the memory alive while the caches are cleared and the job is retried.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


@contextmanager
def render_context(device: str | torch.device) -> Iterator[None]:
    """``torch.inference_mode`` for the whole render, caches cleared when it ends (either way)."""
    try:
        with torch.inference_mode():
            yield
    finally:
        clear_caches(device)


def _floor_multiple(value: int, multiple: int, minimum: int) -> int:
    floor_min = -(-minimum // multiple) * multiple  # the smallest multiple >= minimum
    return max(floor_min, value // multiple * multiple)


def degrade(canon: Mapping[str, Any], profile: ModelProfile | None = None) -> dict[str, Any]:
    """A copy of ``canon`` at about half the size and frame count, for jobs with ``allow_degrade``.

    Width and height halved and rounded down to the model's size multiple (not below the spec's
    minimum side), frames halved to the nearest lower ``4k+1`` (at least 1).

    Returns an equal dict when the job is already at the minimum; callers compare to stop.
    """
    if profile is None:
        profile = get_profile(str(canon["model"]))
    out = dict(canon)
    mult = profile.size_multiple
    out["width"] = min(int(canon["width"]), _floor_multiple(int(canon["width"]) // 2, mult, MIN_SIDE_PX))
    out["height"] = min(int(canon["height"]), _floor_multiple(int(canon["height"]) // 2, mult, MIN_SIDE_PX))
    tm = profile.temporal_multiple
    frames = int(canon["num_frames"])
    out["num_frames"] = min(frames, ((frames - 1) // 2) // tm * tm + 1)
    return out
