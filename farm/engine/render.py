"""The render engine's entry point, what ``farm render`` and the GPU worker call.

An :class:`Engine` holds one loaded model warm per process (built-in tiny models are built in code;
``directory`` models are loaded by :func:`farm.engine.weights.load_components`) with a
:class:`~farm.engine.placement.Placement` for its offload policy, and renders lists of K compatible
canonical specs (``RenderSpec.canonical()``) with expert-phase batching
(:class:`~farm.engine.wan.WanAdapter`). It returns one :class:`RenderResult` per job: the uint8
frames, their hash (the reproducibility identity, :func:`farm.store.encode.frames_sha256`), the
parameters actually rendered, and statistics.

Out of memory: the batch is retried ``oom_retries`` times (default once) after the caches are
cleared and the modules put back in the policy's resting state; if it still fails and every job
of the batch allows degradation, it is re-rendered at a degraded size
(:func:`farm.engine.memory.degrade`, up to ``max_degrade`` halvings) and the results report the
effective parameters; otherwise :class:`farm.errors.OutOfMemory` is raised. Either way the
process stays usable: the next render starts clean. Writing video files is not the engine's job
(:mod:`farm.store`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from farm.determinism import enable_deterministic_kernels
from farm.engine.components import Components
from farm.engine.memory import (
    clear_caches,
    degrade,
    oom_guard,
    release_frames,
    render_context,
    settle_heap,
    unsettle_heap,
)
from farm.engine.placement import POLICIES, Placement
from farm.engine.wan import StepCallback, WanAdapter, check_jobs
from farm.errors import OutOfMemory, RenderCancelled
from farm.profiles import get_profile
from farm.store.encode import frames_sha256

if TYPE_CHECKING:
    from farm.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class RenderResult:
    """One job's render."""

    #: The job's position in the list given to :meth:`Engine.render`.
    index: int
    #: uint8 frames (F, H, W, 3), C-contiguous; None when cancelled.
    frames: np.ndarray | None
    #: :func:`farm.store.encode.frames_sha256` of ``frames``; None when cancelled.
    frames_sha256: str | None
    frames_shape: tuple[int, ...] | None
    #: The canonical parameters actually rendered (degraded ones differ from the request).
    effective_params: dict[str, Any]
    #: Per-job steps and forwards per expert, guidance, attempts; ``batch``: size, swaps,
    #: transfer metrics and seconds per phase of the batch the job was rendered in.
    stats: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False
    degraded: bool = False


class Engine:
    """Renders canonical specs on one device with one offload policy.

    ``device``: a torch device string (``cpu``, ``cuda``, ``cuda:1``); ``offload``: one of
    :data:`farm.engine.placement.POLICIES`; ``torch_threads``: ``torch.set_num_threads`` (None
    leaves torch's default); ``models_path``: where ``directory`` models live.
    """

    def __init__(
        self,
        device: str = "cpu",
        offload: str = "none",
        torch_threads: int | None = None,
        models_path: Path | str | None = None,
        *,
        cache_dir: Path | str | None = None,
        oom_retries: int = 1,
        max_degrade: int = 2,
        deterministic: bool = True,
    ) -> None:
        if offload not in POLICIES:
            raise ValueError(f"unknown offload policy {offload!r}; known: {', '.join(POLICIES)}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available")
        self.offload = offload
        self.torch_threads = torch_threads
        self.models_path = Path(models_path) if models_path is not None else None
        #: Where weight fingerprints are cached when the weights directory is read-only.
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.oom_retries = oom_retries
        self.max_degrade = max_degrade
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        if deterministic:
            enable_deterministic_kernels(cuda=self.device.type == "cuda")
        self._lock = threading.RLock()
        self._model: str | None = None
        self._components: Components | None = None
        self._adapter: WanAdapter | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Engine:
        """An engine with the device, offload policy, threads and paths of ``settings`` (default: the process's)."""
        if settings is None:
            from farm.settings import get_settings

            settings = get_settings()
        return cls(
            device=settings.device,
            offload=settings.offload,
            torch_threads=settings.torch_threads,
            models_path=settings.models_path,
            cache_dir=settings.data_dir,
        )

    # -- the model -------------------------------------------------------------------------------
    @property
    def model(self) -> str | None:
        """Name of the model held warm, if any."""
        return self._model

    @property
    def placement(self) -> Placement | None:
        """The warm model's placement, if a model is loaded."""
        return None if self._adapter is None else self._adapter.placement

    @property
    def adapter(self) -> WanAdapter | None:
        """The warm model's adapter, if a model is loaded."""
        return self._adapter

    def load(self, model_name: str) -> Components:
        """Load ``model_name`` (kept warm: a second call is free; another model replaces it)."""
        with self._lock:
            if self._model == model_name and self._components is not None:
                return self._components
            profile = get_profile(model_name)
            self.unload()
            if profile.source == "builtin":
                from farm.engine.tiny import build_builtin

                components = build_builtin(profile)
            else:
                from farm.engine.weights import load_components

                if self.models_path is None:
                    raise ValueError(f"{model_name} loads from a directory: the engine needs models_path")
                components = load_components(profile, self.models_path, profile.dtype, cache_dir=self.cache_dir)
            placement = Placement(self.device, self.offload)
            try:
                with oom_guard("load", self.device):
                    adapter = WanAdapter(components, placement)
            except OutOfMemory:
                placement.recover()
                placement.detach()
                raise
            self._model, self._components, self._adapter = model_name, components, adapter
            settle_heap()
            return components

    def unload(self) -> None:
        """Give the warm model's device memory back."""
        with self._lock:
            if self._adapter is not None:
                self._adapter.placement.detach()
            self._model = self._components = self._adapter = None
            unsettle_heap()
            clear_caches(self.device)

    def metrics(self) -> dict[str, Any]:
        """The placement's totals since the model was loaded (transfers, bytes, seconds, swaps)."""
        return {} if self.placement is None else self.placement.metrics()

    # -- rendering --------------------------------------------------------------------------------
    def render(
        self, canons: Sequence[Mapping[str, Any]], on_step: StepCallback | None = None
    ) -> list[RenderResult]:
        """Render K compatible canonical specs together; one result per job, in order.

        Raises :class:`farm.errors.IncompatibleJob` before any model work if a job does not fit
        the model or the others, :class:`farm.errors.OutOfMemory` when retries (and degradation,
        where allowed) are exhausted.
        """
        requested = [dict(c) for c in canons]
        if not requested:
            return []
        with self._lock:
            profile = get_profile(str(requested[0].get("model")))
            check_jobs(requested, profile)  # cheap checks before a model is even loaded
            self.load(profile.name)
            adapter = self._adapter
            assert adapter is not None
            adapter.check(requested)
            return self._render_with_retries(adapter, requested, on_step)

    def _render_with_retries(
        self, adapter: WanAdapter, requested: list[dict[str, Any]], on_step: StepCallback | None
    ) -> list[RenderResult]:
        cancelled: set[int] = set()

        def step_hook(index: int, step: int, total: int, phase: str) -> bool | None:
            assert on_step is not None
            try:
                answer = on_step(index, step, total, phase)
            except RenderCancelled:
                cancelled.add(index)
                raise
            if answer is False:
                cancelled.add(index)
            return answer

        current = list(requested)
        level = 0
        attempts = 0
        tries_at_level = 0
        oom_stages: list[str] = []
        start = time.perf_counter()
        while True:
            pending = [i for i in range(len(current)) if i not in cancelled]
            attempts += 1
            tries_at_level += 1
            try:
                outcomes = []
                if pending:
                    with render_context(self.device):
                        outcomes = adapter.render(
                            [current[i] for i in pending],
                            step_hook if on_step is not None else None,
                            indices=pending,
                        )
                break
            except OutOfMemory as exc:
                oom_stages.append(exc.stage)
                release_frames(exc)  # the failed attempt's tensors, before clearing the caches
                adapter.placement.recover()
                clear_caches(self.device)
                log.warning("render attempt %d: %s", attempts, exc)
                if tries_at_level <= self.oom_retries:
                    continue
                still = [current[i] for i in range(len(current)) if i not in cancelled]
                if level >= self.max_degrade or not still or not all(c.get("allow_degrade") for c in still):
                    raise
                degraded = [degrade(c, adapter.profile) for c in current]
                if degraded == current:
                    raise
                current, level, tries_at_level = degraded, level + 1, 0
                log.warning("re-rendering degraded (level %d): %sx%s, %s frames", level,
                            current[0]["width"], current[0]["height"], current[0]["num_frames"])

        by_index = {o.index: o for o in outcomes}
        seconds = time.perf_counter() - start
        results = []
        for i, canon in enumerate(current):
            outcome = by_index.get(i)
            stats: dict[str, Any] = dict(outcome.stats) if outcome is not None else {}
            stats.update(attempts=attempts, oom_stages=list(oom_stages), degrade_level=level,
                         seconds=seconds, device=str(self.device))
            frames = None if outcome is None or outcome.cancelled else outcome.frames
            results.append(
                RenderResult(
                    index=i,
                    frames=frames,
                    frames_sha256=None if frames is None else frames_sha256(frames),
                    frames_shape=None if frames is None else tuple(frames.shape),
                    effective_params=dict(canon),
                    stats=stats,
                    cancelled=frames is None,
                    degraded=level > 0,
                )
            )
        return results
