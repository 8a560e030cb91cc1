"""Jobs that do not fit the model (or each other) are refused before any model work."""

from __future__ import annotations

from typing import Any

import pytest
from engine_helpers import count_forwards, make_canon

from farm.engine.components import Components
from farm.engine.render import Engine
from farm.errors import IncompatibleJob


def changed(canon: dict[str, Any], **fields: Any) -> dict[str, Any]:
    out = dict(canon)
    out.update(fields)
    return out


CASES = [
    # (jobs, field named in the message)
    (lambda: [changed(make_canon(), num_frames=10)], "num_frames"),  # not 4k+1
    (lambda: [changed(make_canon(), num_frames=37)], "num_frames"),  # above the tiny model's 33
    (lambda: [changed(make_canon(), width=40)], "width"),  # not a multiple of 16
    (lambda: [changed(make_canon(model="tiny-dense"), height=48)], "height"),  # dense needs 32s
    (lambda: [changed(make_canon(model="tiny-dense"), boundary_ratio=0.875)], "boundary_ratio"),
    (lambda: [changed(make_canon(model="tiny-dense"), guidance_scale_2=3.0)], "guidance_scale_2"),
    (lambda: [make_canon(), make_canon(width=48)], "width"),  # mixed sizes in one batch
    (lambda: [make_canon(), make_canon(num_frames=5)], "num_frames"),
    (lambda: [make_canon(), make_canon(sampler="euler")], "sampler"),
    (lambda: [make_canon(), make_canon(model="tiny-dense")], "model"),
    (lambda: [changed(make_canon(), sampler="ddim")], "sampler"),
    (lambda: [changed(make_canon(), steps=0)], "steps"),
    (lambda: [changed(make_canon(), seed=-1)], "seed"),
    (lambda: [changed(make_canon(), boundary_ratio=1.5)], "boundary_ratio"),
    (lambda: [{k: v for k, v in make_canon().items() if k != "flow_shift"}], "flow_shift"),
]


@pytest.mark.parametrize(("jobs", "field"), CASES)
def test_incompatible_job_before_any_forward(
    engine: Engine, tiny: Components, tiny_dense: Components, jobs: Any, field: str
) -> None:
    canons = jobs()
    with (
        count_forwards(tiny) as c1,
        count_forwards(tiny_dense) as c2,
        pytest.raises(IncompatibleJob) as info,
    ):
        engine.render(canons)
    assert str(info.value).startswith(f"{field}:"), str(info.value)
    assert sum(c1.any.values()) == 0 and sum(c2.any.values()) == 0, "no module may run"


def test_refused_before_loading_a_model() -> None:
    fresh = Engine(device="cpu", offload="model", torch_threads=1)
    with pytest.raises(IncompatibleJob, match="num_frames"):
        fresh.render([changed(make_canon(), num_frames=8)])
    assert fresh.model is None and fresh.placement is None


def test_empty_batch_is_nothing(engine: Engine) -> None:
    assert engine.render([]) == []
