"""Step caching for the speed presets: diffusers' First Block Cache on the experts, per job.

A ``draft`` or ``custom`` spec carries a ``cache_threshold``. For such a render every expert gets
diffusers' First Block Cache (``ModelMixin.enable_cache(FirstBlockCacheConfig(threshold))``, the
public ``enable_cache`` family): each forward runs the first transformer block, and when its
residual changed by less than ``threshold`` (relative mean) since the last full forward, the rest
of the blocks are skipped and their last residual is reused.

Deterministic by construction: the cache is enabled fresh for each render and disabled after it
(no state crosses renders), and each job's conditional and unconditional forwards have their own
cache context (``job<N>:cond`` / ``job<N>:uncond``), so phase-batched jobs never share a cached
residual: a job renders the same frames alone or in a batch, in any process.

:class:`StepCache` also counts the forwards that skipped the tail blocks (for the stats and the
preset benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: The caching method behind the presets (recorded in the render stats).
METHOD = "first_block_cache"


class StepCache:
    """First Block Cache on the experts for one render (a context manager); a no-op without a threshold."""

    def __init__(self, experts: Mapping[str, torch.nn.Module], threshold: float | None) -> None:
        self.threshold = threshold
        self._experts = dict(experts)
        self._hooks: list[Any] = []
        #: Forwards of each expert whose tail blocks ran (the rest reused the cached residual).
        self.full: dict[str, int] = dict.fromkeys(self._experts, 0)

    @property
    def enabled(self) -> bool:
        """True when this render caches steps."""
        return self.threshold is not None

    def __enter__(self) -> StepCache:
        if self.threshold is None:
            return self
        from diffusers.hooks.first_block_cache import FirstBlockCacheConfig  # public (diffusers.hooks exports it)

        for name, module in self._experts.items():
            module.enable_cache(FirstBlockCacheConfig(threshold=self.threshold))  # type: ignore[operator]
            tail: Any = module.blocks[-1]  # type: ignore[index]
            probe = getattr(tail, "attn1", None) or next(iter(tail.children()))
            self._hooks.append(probe.register_forward_pre_hook(self._counter(name)))
        return self

    def __exit__(self, *_exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self.threshold is None:
            return
        for module in self._experts.values():
            if getattr(module, "is_cache_enabled", False):
                module.disable_cache()  # type: ignore[operator]

    def _counter(self, name: str) -> Any:
        def count(*_args: object) -> None:
            self.full[name] += 1

        return count

    def context(self, job_index: int, branch: str) -> str:
        """The cache context of one job's ``cond`` or ``uncond`` forwards."""
        return f"job{job_index}:{branch}" if self.enabled else branch

    def stats(self, forwards: Mapping[str, int], full: Mapping[str, int]) -> dict[str, Any]:
        """One job's caching stats: the threshold and the forwards that skipped the tail blocks."""
        if self.threshold is None:
            return {}
        skipped = {name: forwards.get(name, 0) - full.get(name, 0) for name in self._experts}
        return {"method": METHOD, "threshold": self.threshold, "skipped": skipped}
