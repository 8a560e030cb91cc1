"""What the guidance rule rests on: per expert, every scale <= 1 renders the same frames.

The engine is given the raw scales (not the canonical 1.0): 0, 0.5 and 1 for the low-noise expert
give bit-identical frames and the same number of forwards (no unconditional one), while 3.0
differs. That is why the canonical form folds [0, 1] into 1.0 (``tests/unit/test_guidance_rule.py``).
"""

from __future__ import annotations

import numpy as np
from engine_helpers import count_forwards, make_canon

from farm.engine.components import Components
from farm.engine.render import Engine


def render(engine: Engine, tiny: Components, g: float, g2: float) -> tuple[np.ndarray, dict[str, int]]:
    canon = {**make_canon(guidance_scale=g, guidance_scale_2=3.0), "guidance_scale_2": g2}
    with count_forwards(tiny) as counter:
        result = engine.render([canon])[0]
    assert result.frames is not None
    return result.frames, dict(counter.top)


def test_scales_up_to_1_render_the_same_frames_per_expert(engine: Engine, tiny: Components) -> None:
    frames = {g2: render(engine, tiny, 4.0, g2) for g2 in (0.0, 0.5, 1.0, 3.0)}
    base, base_forwards = frames[1.0]
    for g2 in (0.0, 0.5):
        assert np.array_equal(frames[g2][0], base), f"guidance_scale_2={g2} rendered other frames than 1.0"
        assert frames[g2][1] == base_forwards
    assert not np.array_equal(frames[3.0][0], base)
    assert frames[3.0][1]["transformer_2"] > base_forwards["transformer_2"]  # the unconditional forwards
