"""Device placement: which of a model's modules sit on the accelerator, moved by one policy.

A :class:`Placement` owns the modules of one loaded model (``text_encoder``, ``transformer``,
``transformer_2``, ``vae``) and moves them between the host (CPU) and the device as the render
loop asks for them (:meth:`Placement.use`). Every move is recorded in a :class:`TransferLog`
(what, from, to, bytes, seconds, monotonic time, and the resident set after it).

Offload policies (:data:`POLICIES`):

* ``none`` — every module is placed on the device once, when the model is attached, and stays.
* ``model`` — each component is on the device only while it runs: text encoder, then the
  high-noise expert, then the low-noise expert, then the VAE (what diffusers'
  ``enable_model_cpu_offload`` does, order ``text_encoder->transformer->transformer_2->vae``).
* ``expert`` — the text encoder and the VAE stay on the device; the experts swap.
* ``sequential`` — for small cards: the experts stay in host memory and are streamed block by
  block onto the device while they run (diffusers' group offloading, ``block_level``, one block per
  group, CUDA streams); the text encoder and the VAE are moved like ``model``.

Invariant under every offloading policy: **at most one expert is resident at any time**. The
layer enforces it: before an expert is onloaded (or activated for streaming) the other expert is
offloaded. ``none`` keeps both experts on the device by definition.

**Swap**: one *expert onload on demand* — the render loop asks for an expert that is not resident
and the layer brings it onto the device (``model``/``expert``: a whole-module host→device copy;
``sequential``: the expert becomes the streamed one). The initial placement under ``none`` is not
a swap. A two-expert job rendered alone therefore costs 2 swaps under ``model``, ``expert`` and
``sequential`` (high-noise expert on, then low-noise expert on in its place) and 0 under ``none``;
K compatible jobs phase-batched together cost 2 swaps in all, 2/K per job. A dense (one-expert)
model costs 1 swap per job under ``model``/``sequential`` and at most 1 in all under ``expert``.

On a CUDA device the moves are real. Every module keeps one host copy of its weights (made when
the model is attached), **pinned** for the modules the policy moves; weights never change during
inference, so an offload only re-points the parameters to that copy and frees the device memory,
and an onload is a non-blocking copy from it. The host therefore holds the whole model (as with
diffusers' ``enable_model_cpu_offload``). Under ``sequential`` the log has one ``stream`` entry
per expert activation (bytes = the expert's size); the block transfers made by the hooks during
each forward are not logged one by one.

On a CPU device (development machines, CI) host and device are the same memory: by default the
layer tracks residency logically, with no copy, and logs the transfers it would have made (bytes
counted, seconds ~0) — so the policies can be tested without a GPU. ``simulate=False`` makes real
host-to-host copies instead, exercising the CUDA code path (re-pointing, group offloading hooks).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from farm.kinds import OffloadPolicy, values

POLICIES: tuple[str, ...] = values(OffloadPolicy)
#: Names of the expert modules (high-noise first).
EXPERTS: tuple[str, ...] = ("transformer", "transformer_2")
#: Where offloaded modules live (host memory), as written in the transfer log.
HOST = "host"


@dataclass(frozen=True)
class Transfer:
    """One recorded move of one module."""

    module: str
    src: str
    dst: str
    bytes: int
    seconds: float
    #: ``time.monotonic()`` when the move finished.
    at: float
    #: ``place`` (initial placement), ``onload``, ``offload``, ``stream`` (an expert made the
    #: streamed one under ``sequential``) or ``unstream``.
    kind: str
    #: Whether this transfer counts as an expert swap (see the module docstring).
    swap: bool
    #: The modules resident on the device after this transfer (sorted).
    resident_after: tuple[str, ...]


@dataclass
class TransferLog:
    """Every transfer a :class:`Placement` made, in order."""

    entries: list[Transfer] = field(default_factory=list)

    def append(self, entry: Transfer) -> None:
        """Record one transfer."""
        self.entries.append(entry)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Transfer]:
        return iter(self.entries)

    def since(self, mark: int) -> list[Transfer]:
        """Entries recorded after ``mark`` (a previous ``len(log)``)."""
        return self.entries[mark:]

    @staticmethod
    def summarize(entries: list[Transfer]) -> dict[str, Any]:
        """Counts, bytes and seconds of ``entries`` (what a render reports)."""
        return {
            "transfers": len(entries),
            "bytes": sum(e.bytes for e in entries),
            "seconds": sum(e.seconds for e in entries),
            "swaps": sum(1 for e in entries if e.swap),
            "onload_bytes": sum(e.bytes for e in entries if e.dst != HOST),
            "max_experts_resident": max(
                (sum(1 for m in e.resident_after if m in EXPERTS) for e in entries), default=0
            ),
        }

    def as_dicts(self) -> list[dict[str, Any]]:
        """Every transfer as a dict, in order."""
        return [asdict(e) for e in self.entries]


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (what a transfer moves)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    # parameters() and buffers() drop duplicates (tied weights appear once).
    return [*module.parameters(), *module.buffers()]


class Placement:
    """Moves the named modules of one model between the host and ``device`` under ``policy``.

    ``Placement("cpu", policy)`` tracks residency logically (no copy: host and device are the
    same memory), which is how tests on a CPU-only machine assert residency and count swaps;
    ``Placement("cuda:0", policy)`` makes the real moves. ``simulate=False`` on the CPU makes real
    copies too (host memory to host memory), so the CUDA code path can be exercised without one.
    """

    def __init__(
        self, device: str | torch.device = "cpu", policy: str = "none", *, simulate: bool | None = None
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown offload policy {policy!r}; known: {', '.join(POLICIES)}")
        self.device = torch.device(device)
        if simulate and self.device.type != "cpu":
            raise ValueError("only a CPU device can be simulated (the modules would not be where they run)")
        self.policy: str = policy
        #: True when moves are tracked, not made (the default on a CPU device: host memory is
        #: device memory).
        self.simulated = self.device.type == "cpu" if simulate is None else simulate
        #: Offloaded weights live in pinned host memory (CUDA only).
        self.pinned = self.device.type == "cuda"
        self.log = TransferLog()
        self._modules: dict[str, torch.nn.Module] = {}
        self._bytes: dict[str, int] = {}
        self._host_copies: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._resident: set[str] = set()
        self._streamed: str | None = None
        self._max_experts = 0
        self.swap_count = 0

    # -- state -------------------------------------------------------------------------------
    @property
    def resident(self) -> frozenset[str]:
        """Modules currently on the device (the streamed expert counts as resident)."""
        return frozenset(self._resident)

    @property
    def max_experts_resident(self) -> int:
        """The most experts ever resident at once since the model was attached."""
        return self._max_experts

    @property
    def modules(self) -> Mapping[str, torch.nn.Module]:
        """The attached modules by name (a copy)."""
        return dict(self._modules)

    def experts_resident(self) -> int:
        """How many experts are resident now."""
        return sum(1 for m in self._resident if m in EXPERTS)

    def metrics(self) -> dict[str, Any]:
        """Totals since attach: transfers, bytes, seconds, swaps, and the residency peak."""
        out = TransferLog.summarize(self.log.entries)
        out["swaps"] = self.swap_count
        out["max_experts_resident"] = self._max_experts
        out["policy"] = self.policy
        out["device"] = str(self.device)
        return out

    # -- lifecycle ---------------------------------------------------------------------------
    def attach(self, modules: Mapping[str, torch.nn.Module | None]) -> None:
        """Take charge of a model's modules (all on the host) and make the policy's initial placement.

        Under ``none`` everything, under ``expert`` the text encoder and the VAE.
        """
        if self._modules:
            self.detach()
        self._modules = {name: m for name, m in modules.items() if m is not None}
        self._bytes = {name: module_bytes(m) for name, m in self._modules.items()}
        if not self.simulated:
            self._prepare_host_memory()
        self._initial_placement()

    def _initial_placement(self) -> None:
        for name in self._modules:
            if self.policy == "none" or (self.policy == "expert" and name not in EXPERTS):
                self._onload(name, kind="place", swap=False)

    def detach(self) -> None:
        """Bring everything back to the host and forget the modules.

        Group offloading hooks applied for ``sequential`` are removed: the modules are
        plain host modules again.
        """
        self.offload_all()
        if not self.simulated and self.policy == "sequential":
            for name in EXPERTS:
                if name in self._modules:
                    self._remove_group_offloading(self._modules[name])
        self._modules.clear()
        self._bytes.clear()
        self._host_copies.clear()

    def offload_all(self) -> None:
        """Every resident module back to the host (e.g. after an out-of-memory error)."""
        if self._streamed is not None:
            self._unstream(self._streamed)
        for name in sorted(self._resident):
            self._offload(name)

    def recover(self) -> None:
        """Return to the policy's resting state after a failed render.

        E.g. after an out-of-memory error in the middle of a transfer: everything back to
        the host, then the initial placement again.
        """
        if self._streamed is not None:
            self._unstream(self._streamed, strict=False)
        for name in sorted(self._resident):
            self._offload(name)
        if not self.simulated:  # a module may be half-moved without being marked resident
            for pairs in self._host_copies.values():
                for tensor, host in pairs:
                    tensor.data = host
        self._initial_placement()

    # -- the one entry point the render loop uses ----------------------------------------------
    def use(self, name: str) -> None:
        """Make ``name`` available on the device for the next computation, moving others out as the policy says.

        Enforces at most one resident expert under every offloading policy.
        """
        if name not in self._modules:
            raise KeyError(f"no module {name!r} attached")
        if self.policy == "none":
            return
        if self.policy == "model":
            self._use_model(name)
        elif self.policy == "expert":
            self._use_expert(name)
        else:
            self._use_sequential(name)

    def _use_model(self, name: str) -> None:
        """``model``: ``name`` alone on the device."""
        for other in sorted(self._resident - {name}):
            self._offload(other)
        if name not in self._resident:
            self._onload(name, kind="onload", swap=name in EXPERTS)

    def _use_expert(self, name: str) -> None:
        """``expert``: an expert swaps with the resident one; the other modules stay put."""
        if name in EXPERTS and name not in self._resident:
            for other in EXPERTS:
                if other in self._resident:
                    self._offload(other)
            self._onload(name, kind="onload", swap=True)

    def _use_sequential(self, name: str) -> None:
        """``sequential``: an expert is streamed, any other module is onloaded whole, alone."""
        if name in EXPERTS:
            for other in sorted(self._resident - {name}):
                if other in EXPERTS:
                    self._unstream(other)
                else:
                    self._offload(other)
            if self._streamed != name:
                self._stream(name)
        else:
            if self._streamed is not None:
                self._unstream(self._streamed)
            for other in sorted(self._resident - {name}):
                self._offload(other)
            if name not in self._resident:
                self._onload(name, kind="onload", swap=False)

    # -- the moves ----------------------------------------------------------------------------
    def _prepare_host_memory(self) -> None:
        """Keep one host copy of every weight, pinned (CUDA) for the modules the policy moves.

        The experts under ``sequential`` get diffusers' group offloading instead, which pins its
        own copies.
        """
        if self.pinned:
            limit_pinned_rounding()
        for name, module in self._modules.items():
            if self.policy == "sequential" and name in EXPERTS:
                self._apply_group_offloading(module)
                continue
            # modules the policy moves back and forth (under ``none`` nothing moves after attach)
            moves = self.policy in ("model", "sequential") or (self.policy == "expert" and name in EXPERTS)
            pairs = []
            for tensor in _tensors(module):
                host = tensor.data if tensor.device.type == "cpu" else tensor.data.to("cpu")
                if self.pinned and moves and not host.is_pinned():
                    host = host.pin_memory()
                tensor.data = host
                pairs.append((tensor, host))
            self._host_copies[name] = pairs

    def _apply_group_offloading(self, module: torch.nn.Module) -> None:
        from diffusers.hooks.group_offloading import apply_group_offloading  # public (diffusers.hooks exports it)

        if diffusers_private("_is_group_offload_enabled")(module):
            return
        apply_group_offloading(
            module,
            onload_device=self.device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=self.device.type == "cuda",
        )

    @staticmethod
    def _remove_group_offloading(module: torch.nn.Module) -> None:
        from diffusers.hooks.hooks import HookRegistry  # public (diffusers.hooks exports it)

        if not diffusers_private("_is_group_offload_enabled")(module):
            return
        registry = HookRegistry.check_if_exists_or_initialize(module)
        for hook in ("_GROUP_OFFLOADING", "_LAYER_EXECUTION_TRACKER", "_LAZY_PREFETCH_GROUP_OFFLOADING"):
            registry.remove_hook(diffusers_private(hook), recurse=True)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _record(self, name: str, src: str, dst: str, seconds: float, kind: str, swap: bool) -> None:
        self._max_experts = max(self._max_experts, self.experts_resident())
        self.log.append(
            Transfer(
                module=name,
                src=src,
                dst=dst,
                bytes=self._bytes.get(name, 0),
                seconds=seconds,
                at=time.monotonic(),
                kind=kind,
                swap=swap,
                resident_after=tuple(sorted(self._resident)),
            )
        )
        if swap:
            self.swap_count += 1

    def _check_invariant(self, name: str) -> None:
        if self.policy != "none" and name in EXPERTS and self.experts_resident() > 0:
            resident = sorted(m for m in self._resident if m in EXPERTS)
            raise RuntimeError(f"placement invariant: onloading {name} while {resident} resident")

    def _onload(self, name: str, *, kind: str, swap: bool) -> None:
        self._check_invariant(name)
        start = time.perf_counter()
        if not self.simulated:
            with torch.inference_mode(False):  # parameters stay normal tensors
                for tensor, host in self._host_copies[name]:
                    tensor.data = host.to(self.device, non_blocking=self.pinned, copy=True)
            self._sync()
        self._resident.add(name)
        self._record(name, HOST, str(self.device), time.perf_counter() - start, kind, swap)

    def _offload(self, name: str) -> None:
        start = time.perf_counter()
        if not self.simulated:
            self._sync()
            for tensor, host in self._host_copies[name]:
                tensor.data = host  # weights are unchanged: re-point to the pinned copy
        self._resident.discard(name)
        self._record(name, str(self.device), HOST, time.perf_counter() - start, "offload", False)

    def _stream(self, name: str) -> None:
        """Make ``name`` the streamed expert (group offloading moves its blocks while it runs)."""
        self._check_invariant(name)
        self._streamed = name
        self._resident.add(name)
        self._record(name, HOST, str(self.device), 0.0, "stream", True)

    def _unstream(self, name: str, *, strict: bool = True) -> None:
        """``name`` stops being the streamed expert.

        Group offloading moves every block back to the host after its forward; should any group
        still be on the device, it is offloaded here, so the invariant holds whatever the hooks
        left behind.
        """
        start = time.perf_counter()
        if not self.simulated:
            self._sync()
            module = self._modules[name]
            if self._bytes_on_device(module):
                self._force_group_offload(module)
                self._sync()
            left = self._bytes_on_device(module)
            if strict and left:
                raise RuntimeError(f"placement invariant: expert {name} left {left} bytes on the device")
        self._resident.discard(name)
        if self._streamed == name:
            self._streamed = None
        self._record(name, str(self.device), HOST, time.perf_counter() - start, "unstream", False)

    @staticmethod
    def _bytes_on_device(module: torch.nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in _tensors(module) if t.device.type != "cpu")

    @staticmethod
    def _force_group_offload(module: torch.nn.Module) -> None:
        name = diffusers_private("_GROUP_OFFLOADING")
        for sub in module.modules():
            registry = getattr(sub, "_diffusers_hook", None)
            hook = registry.get_hook(name) if registry is not None else None
            if hook is not None:
                hook.group.offload_()


#: diffusers' group-offloading internals farm needs, from ``diffusers.hooks.group_offloading``.
#: Enabling group offloading and the hook registry are public (``diffusers.hooks``); asking whether
#: a module has it, removing it and reaching a block group's ``offload_`` are not. farm names them
#: here, once; ``tests/integration/engine/test_diffusers_internals.py`` fails with a clear message
#: when the pinned diffusers renames or changes them.
DIFFUSERS_PRIVATE: tuple[str, ...] = (
    "_is_group_offload_enabled", "_GROUP_OFFLOADING", "_LAYER_EXECUTION_TRACKER", "_LAZY_PREFETCH_GROUP_OFFLOADING",
)


def diffusers_private(name: str) -> Any:
    """One of :data:`DIFFUSERS_PRIVATE` from the installed diffusers, or a RuntimeError saying what changed."""
    import diffusers
    from diffusers.hooks import group_offloading

    if name not in DIFFUSERS_PRIVATE:
        raise ValueError(f"{name!r} is not one of the diffusers internals farm uses: {DIFFUSERS_PRIVATE}")
    try:
        return getattr(group_offloading, name)
    except AttributeError:
        raise RuntimeError(
            f"diffusers {diffusers.__version__} has no diffusers.hooks.group_offloading.{name}: farm's sequential "
            "offload policy depends on it (farm/engine/placement.py); pin the diffusers release farm was tested "
            "with or port the placement to the new internals"
        ) from None


#: Pinned host allocations above this size are not rounded up to a power of two. torch rounds
#: every pinned block by default: an A14B expert's 141.6 MB FFN weights would take 256 MB each
#: (about 1.4x the weights, ~100 GB pinned for two experts and the text encoder).
PINNED_ROUND_THRESHOLD_MB = 8


def limit_pinned_rounding() -> None:
    """Stop power-of-two rounding of large pinned host allocations (see PINNED_ROUND_THRESHOLD_MB)."""
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    if setter is not None:
        setter(f"pinned_max_round_threshold_mb:{PINNED_ROUND_THRESHOLD_MB}")
    else:  # older torch
        torch.cuda.memory._set_allocator_settings(f"pinned_max_round_threshold_mb:{PINNED_ROUND_THRESHOLD_MB}")
