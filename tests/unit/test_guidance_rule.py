"""The guidance rule: per expert, a scale <= 1 means no classifier-free guidance.

Every scale in [0, 1] renders the same frames (the conditional forward alone; shown on the engine
in ``tests/integration/engine/test_guidance_frames.py``), so they all get one canonical value (1.0)
and one job key; a scale > 1 is a different render with its own key.
"""

from __future__ import annotations

import pytest

from farm.spec import GUIDANCE_OFF, guidance_rendered, parse_spec


def key(**fields: object) -> str:
    return parse_spec({"prompt": "a heron in the reeds", "seed": 3, "model": "tiny", **fields}).job_key


@pytest.mark.parametrize("field", ["guidance_scale", "guidance_scale_2"])
def test_every_scale_up_to_1_is_one_render_and_one_key(field: str) -> None:
    keys = {key(**{field: g}) for g in (0, 0.0, 0.25, 0.999, 1, 1.0)}
    assert len(keys) == 1
    canon = parse_spec({"prompt": "p", "seed": 1, "model": "tiny", field: 0.5}).canonical()
    assert canon[field] == GUIDANCE_OFF == 1.0
    assert key(**{field: 1.0}) != key(**{field: 1.5}) != key(**{field: 3.0})


def test_the_rule_is_per_expert() -> None:
    # the high-noise expert guided, the low-noise one not: distinct from both guided and both off
    one_off = key(guidance_scale=4.0, guidance_scale_2=0.5)
    assert one_off == key(guidance_scale=4.0, guidance_scale_2=1.0)
    both_on, both_off = key(guidance_scale=4.0, guidance_scale_2=3.0), key(guidance_scale=0.5, guidance_scale_2=0.5)
    assert len({one_off, both_on, both_off}) == 3


def test_the_dense_model_follows_the_same_rule() -> None:
    a = parse_spec({"prompt": "p", "seed": 1, "model": "tiny-dense", "guidance_scale": 0.2})
    b = parse_spec({"prompt": "p", "seed": 1, "model": "tiny-dense", "guidance_scale": 1})
    assert a.job_key == b.job_key and a.canonical()["guidance_scale_2"] is None


def test_guidance_rendered() -> None:
    assert [guidance_rendered(g) for g in (0.0, 0.5, 1.0, 1.0001, 7.5)] == [1.0, 1.0, 1.0, 1.0001, 7.5]
