"""Offload policies: residency, swaps, transfer log, and frames identical across policies.

On this CPU-only machine ``Placement("cpu", ...)`` tracks residency logically and logs the
transfers it would make; the policies' decisions (what moves when) are the same on CUDA, where
the moves are real.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers.hooks.group_offloading import _is_group_offload_enabled
from engine_helpers import EXPERTS, make_canon

from farm.engine import tiny as tiny_module
from farm.engine.components import Components
from farm.engine.placement import POLICIES, Placement, Transfer
from farm.engine.render import Engine
from farm.engine.wan import WanAdapter
from farm.profiles import get_profile
from farm.store.encode import frames_sha256

#: Expert swaps per solo two-expert job, by policy.
SWAPS_PER_JOB = {"none": 0, "model": 2, "expert": 2, "sequential": 2}


def replay_max_experts(entries: list[Transfer], start: frozenset[str]) -> int:
    """Replay the log from ``start`` and return the most experts resident at once.

    Check that each entry's ``resident_after`` matches the replayed state.
    """
    resident = set(start)
    peak = sum(1 for m in resident if m in EXPERTS)
    for e in entries:
        if e.dst == "host":
            resident.discard(e.module)
        else:
            resident.add(e.module)
        assert tuple(sorted(resident)) == e.resident_after
        peak = max(peak, sum(1 for m in resident if m in EXPERTS))
    return peak


@pytest.fixture(scope="module")
def policy_engines() -> dict[str, Engine]:
    return {policy: Engine(device="cpu", offload=policy, torch_threads=1) for policy in POLICIES}


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_residency_swaps_and_frames(policy: str, policy_engines: dict[str, Engine], solo: Any) -> None:
    engine = policy_engines[policy]
    engine.load("tiny")
    placement = engine.placement
    assert placement is not None and placement.simulated
    canons = [make_canon(seed=s, steps=4) for s in (11, 12)]
    hashes = []
    for canon in canons:
        mark, before = len(placement.log), placement.resident
        result = engine.render([canon])[0]
        entries = placement.log.since(mark)
        assert result.stats["batch"]["swaps"] == SWAPS_PER_JOB[policy]
        assert sum(e.swap for e in entries) == SWAPS_PER_JOB[policy]
        peak = replay_max_experts(entries, before)
        assert peak == (2 if policy == "none" else 1)
        hashes.append(result.frames_sha256)
    # frames do not depend on the policy
    assert hashes == [solo(c).frames_sha256 for c in canons]
    metrics = placement.metrics()
    assert metrics["swaps"] == placement.swap_count == 2 * SWAPS_PER_JOB[policy]
    assert metrics["max_experts_resident"] == placement.max_experts_resident == (2 if policy == "none" else 1)
    if policy == "none":
        assert placement.resident == {"text_encoder", "transformer", "transformer_2", "vae"}
        assert metrics["transfers"] == 4  # the initial placement only
    if policy == "model":  # each component on the device only while it runs: the VAE ran last
        assert placement.resident == {"vae"}
    if policy == "expert":
        assert placement.resident == {"text_encoder", "transformer_2", "vae"}
    if policy == "sequential":
        kinds = {e.kind for e in placement.log if e.module in EXPERTS}
        assert kinds == {"stream", "unstream"}


def test_model_policy_order(policy_engines: dict[str, Engine]) -> None:
    engine = policy_engines["model"]
    engine.load("tiny")
    placement = engine.placement
    assert placement is not None
    mark = len(placement.log)
    engine.render([make_canon(seed=5, steps=4)])
    onloads = [e.module for e in placement.log.since(mark) if e.dst != "host"]
    assert onloads == ["text_encoder", "transformer", "transformer_2", "vae"]


def test_transfer_entries_record_bytes_and_time(policy_engines: dict[str, Engine], tiny: Components) -> None:
    engine = policy_engines["expert"]
    engine.load("tiny")
    placement = engine.placement
    assert placement is not None
    expert_bytes = sum(p.numel() * p.element_size() for p in tiny.transformer.parameters())
    swaps = [e for e in placement.log if e.swap]
    assert swaps, "the policy test rendered with this engine"
    for e in swaps:
        assert e.module in EXPERTS and e.kind == "onload" and e.dst == "cpu" and e.src == "host"
        assert e.bytes >= expert_bytes
        assert e.seconds >= 0 and e.at > 0
    times = [e.at for e in placement.log]
    assert times == sorted(times)


class TestPlacementUnit:
    """The placement layer alone, on stand-in modules."""

    @staticmethod
    def modules() -> dict[str, torch.nn.Module]:
        names = ("text_encoder", "transformer", "transformer_2", "vae")
        return {name: torch.nn.Linear(4, 4) for name in names}

    @pytest.mark.parametrize("policy", ["model", "expert", "sequential"])
    def test_at_most_one_expert_is_enforced(self, policy: str) -> None:
        p = Placement("cpu", policy)
        p.attach(self.modules())
        for name in ["transformer", "transformer_2", "transformer", "vae", "transformer_2", "text_encoder"]:
            p.use(name)
            assert name in p.resident
            assert p.experts_resident() <= 1
        assert p.max_experts_resident == 1
        assert p.swap_count == 4  # every expert onload: the experts were brought on 4 times

    def test_swap_count_counts_expert_onloads_only(self) -> None:
        p = Placement("cpu", "expert")
        p.attach(self.modules())
        assert p.resident == {"text_encoder", "vae"} and p.swap_count == 0
        p.use("transformer")
        p.use("transformer")  # already resident: no transfer
        p.use("vae")  # resident under ``expert``
        assert p.swap_count == 1
        p.use("transformer_2")
        assert p.resident == {"text_encoder", "vae", "transformer_2"} and p.swap_count == 2

    def test_none_keeps_everything(self) -> None:
        p = Placement("cpu", "none")
        p.attach(self.modules())
        for name in ("transformer", "transformer_2", "vae"):
            p.use(name)
        assert p.resident == {"text_encoder", "transformer", "transformer_2", "vae"}
        assert p.swap_count == 0 and len(p.log) == 4 and all(e.kind == "place" for e in p.log)

    def test_recover_returns_to_resting_state(self) -> None:
        p = Placement("cpu", "expert")
        p.attach(self.modules())
        p.use("transformer")
        p.recover()
        assert p.resident == {"text_encoder", "vae"}
        m = Placement("cpu", "model")
        m.attach(self.modules())
        m.use("transformer_2")
        m.recover()
        assert m.resident == frozenset()

    def test_unknown_policy_and_module(self) -> None:
        with pytest.raises(ValueError, match="offload policy"):
            Placement("cpu", "everything")
        p = Placement("cpu", "model")
        p.attach(self.modules())
        with pytest.raises(KeyError):
            p.use("unet")


def test_group_offloading_hooks_apply_and_come_off() -> None:
    """The diffusers calls ``sequential`` makes on CUDA, exercised on the CPU (no streams there).

    The expert computes the same with the hooks, and detaching removes them.
    """
    expert = tiny_module._build(get_profile("tiny")).transformer  # a private copy
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, 16, 3, 4, 4, generator=gen),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, 8, 32, generator=gen),
        "return_dict": False,
    }
    with torch.inference_mode():
        reference = expert(**inputs)[0]
        placement = Placement("cpu", "sequential")
        placement._apply_group_offloading(expert)
        assert _is_group_offload_enabled(expert)
        assert torch.equal(expert(**inputs)[0], reference)
        Placement._force_group_offload(expert)  # what un-streaming does if blocks stayed behind
        assert torch.equal(expert(**inputs)[0], reference)
        Placement._remove_group_offloading(expert)
        assert not _is_group_offload_enabled(expert)
        assert torch.equal(expert(**inputs)[0], reference)


@pytest.mark.parametrize("policy", POLICIES)
def test_real_copies_on_cpu_give_same_frames(policy: str, tiny: Components, solo: Any) -> None:
    """``simulate=False`` makes the real moves: the code path CUDA takes, checked here.

    Host to host copies, re-pointing the parameters, group offloading hooks for ``sequential``.
    """
    originals = {name: [p.data_ptr() for p in m.parameters()] for name, m in tiny.modules().items()}
    placement = Placement("cpu", policy, simulate=False)
    adapter = WanAdapter(tiny, placement)
    try:
        canons = [make_canon(seed=s, steps=4) for s in (81, 82)]
        with torch.inference_mode():
            outcomes = adapter.render(canons)
        assert placement.swap_count == SWAPS_PER_JOB[policy]
        for outcome, canon in zip(outcomes, canons, strict=True):
            assert outcome.frames is not None
            assert frames_sha256(outcome.frames) == solo(canon).frames_sha256
        for name in placement.resident:
            if policy == "sequential" and name in EXPERTS:
                continue
            moved = [p.data_ptr() for p in tiny.modules()[name].parameters()]
            assert moved != originals[name], f"{name} is resident: its weights are a device copy"
            assert not any(p.is_inference() for p in tiny.modules()[name].parameters())
        if policy == "sequential":
            assert all(_is_group_offload_enabled(getattr(tiny, n)) for n in EXPERTS)
    finally:
        placement.detach()
    for name, module in tiny.modules().items():  # back on the original host tensors
        assert [p.data_ptr() for p in module.parameters()] == originals[name], name
        assert not _is_group_offload_enabled(module)
