"""Cancel through the step callback: the cancelled job is dropped, the others are unaffected."""

from __future__ import annotations

from typing import Any

from engine_helpers import make_canon

from farm.engine.render import Engine
from farm.errors import RenderCancelled


def test_cancel_one_job_of_a_batch(engine: Engine, solo: Any) -> None:
    canons = [make_canon(seed=s) for s in (21, 22, 23)]
    calls: list[tuple[int, int, int, str]] = []

    def on_step(job: int, step: int, total: int, phase: str) -> bool | None:
        calls.append((job, step, total, phase))
        if job == 1 and step == 2:
            return False  # cancel the middle job during the high-noise phase
        return None

    results = engine.render(canons, on_step=on_step)
    assert [r.cancelled for r in results] == [False, True, False]
    assert results[1].frames is None and results[1].frames_sha256 is None
    for i in (0, 2):
        assert results[i].frames_sha256 == solo(canons[i]).frames_sha256
    # job 1 got no call after its cancel; the others ran all 8 steps in order
    assert max(step for job, step, _, _ in calls if job == 1) == 2
    for job in (0, 2):
        steps = [step for j, step, _, _ in calls if j == job]
        assert steps == list(range(1, 9))
    assert {phase for *_, phase in calls} == {"high_noise", "low_noise"}
    assert all(total == 8 for _, _, total, _ in calls)
    assert results[1].stats["steps_done"] == 2


def test_cancel_by_raising_in_low_noise_phase(engine: Engine, solo: Any) -> None:
    canons = [make_canon(seed=31), make_canon(seed=32)]

    def on_step(job: int, step: int, total: int, phase: str) -> None:
        if job == 0 and phase == "low_noise":
            raise RenderCancelled("stop job 0")

    results = engine.render(canons, on_step=on_step)
    assert results[0].cancelled and not results[1].cancelled
    assert results[1].frames_sha256 == solo(canons[1]).frames_sha256


def test_cancel_every_job_then_render_again(engine: Engine, solo: Any) -> None:
    canon = make_canon(seed=41)
    results = engine.render([canon], on_step=lambda *_: False)
    assert results[0].cancelled and results[0].frames is None
    assert results[0].stats["steps_done"] == 1
    assert engine.render([canon])[0].frames_sha256 == solo(canon).frames_sha256
