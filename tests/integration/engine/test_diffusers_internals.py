"""The private diffusers internals farm's sequential offload policy relies on still behave.

``farm.engine.placement`` uses public diffusers API where it exists (``diffusers.hooks.
apply_group_offloading``, ``HookRegistry``) and names the rest once (``DIFFUSERS_PRIVATE``). If the
pinned diffusers renames or changes one of them, this fails with a message saying which and where.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers.hooks import HookRegistry, apply_group_offloading

from farm.engine.placement import DIFFUSERS_PRIVATE, Placement, diffusers_private

CHANGED = (f"diffusers {diffusers.__version__} changed group-offloading internals that farm/engine/placement.py "
           "uses ({what}): pin the tested diffusers release or port the placement")


class Blocks(torch.nn.Module):
    """Enough structure for block-level group offloading: a ModuleList of blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


@pytest.mark.parametrize("name", DIFFUSERS_PRIVATE)
def test_every_private_name_exists(name: str) -> None:
    try:
        diffusers_private(name)
    except RuntimeError as exc:
        pytest.fail(CHANGED.format(what=str(exc)))


def test_they_behave_as_the_placement_expects() -> None:
    module = Blocks()
    enabled = diffusers_private("_is_group_offload_enabled")
    assert enabled(module) is False, CHANGED.format(what="_is_group_offload_enabled on a plain module")
    apply_group_offloading(module, onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=1, use_stream=False)
    assert enabled(module) is True, CHANGED.format(what="_is_group_offload_enabled after apply_group_offloading")
    hooks = [getattr(sub, "_diffusers_hook", None) for sub in module.modules()]
    groups = [r.get_hook(diffusers_private("_GROUP_OFFLOADING")) for r in hooks if r is not None]
    groups = [g for g in groups if g is not None]
    assert groups and all(callable(getattr(getattr(g, "group", None), "offload_", None)) for g in groups), (
        CHANGED.format(what="the _GROUP_OFFLOADING hook's group.offload_")
    )
    Placement._force_group_offload(module)
    Placement._remove_group_offloading(module)
    assert enabled(module) is False, CHANGED.format(what="removing the hooks by their names")
    assert HookRegistry.check_if_exists_or_initialize(module) is not None
    assert torch.equal(module(torch.ones(1, 4)), module(torch.ones(1, 4)))  # the module still runs


def test_an_unknown_name_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of the diffusers internals"):
        diffusers_private("_something_else")
