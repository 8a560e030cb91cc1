"""Helpers shared by the engine tests and the GPU tests (imported as ``engine_helpers``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from farm.engine.components import Components
from farm.spec import parse_spec

EXPERTS = ("transformer", "transformer_2")


def make_canon(**fields: Any) -> dict[str, Any]:
    """A canonical spec for the tiny model (defaults: a fixed prompt, seed 1)."""
    data: dict[str, Any] = {"prompt": "a cat dancing in the rain", "seed": 1, "model": "tiny"}
    data.update(fields)
    return parse_spec(data).canonical()


class ForwardCounter:
    """Counts forward calls of each component's top-level module, and of any submodule."""

    def __init__(self) -> None:
        self.top: dict[str, int] = {}
        self.any: dict[str, int] = {}


@contextmanager
def count_forwards(components: Components) -> Iterator[ForwardCounter]:
    """Forward pre-hooks on every module of every component.

    ``top[name]`` counts calls of the component itself (an expert's forwards), ``any[name]``
    calls of any of its submodules (the VAE decodes through submodules).
    """
    counter = ForwardCounter()
    handles = []
    for name, module in components.modules().items():
        counter.top[name] = 0
        counter.any[name] = 0

        def top_hook(_m: Any, _args: Any, name: str = name) -> None:
            counter.top[name] += 1

        def any_hook(_m: Any, _args: Any, name: str = name) -> None:
            counter.any[name] += 1

        handles.append(module.register_forward_pre_hook(top_hook))
        for sub in module.modules():
            handles.append(sub.register_forward_pre_hook(any_hook))
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()
