"""Degradation under load, the pure parts: the settings, the thresholds and the degraded spec.

What a worker renders a job with under load (:func:`farm.worker.degrade.degraded_canon`: the
profile's draft steps and step caching, never more quality than asked), when the farm counts as
loaded (:class:`farm.worker.degrade.DegradePolicy`), and ``FARM_DEGRADE_*``.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from farm.ledger.stats import FarmLoad
from farm.profiles import PROFILES
from farm.settings import Settings
from farm.spec import compatibility_key, parse_spec, spec_from_canonical
from farm.worker.degrade import DegradePolicy, degraded_canon


def canon(**fields: object) -> dict[str, object]:
    return parse_spec({"prompt": "a fox", "seed": 1, **fields}).canonical()


@pytest.mark.parametrize("model", sorted(PROFILES))
def test_a_final_spec_degrades_to_the_draft_preset(model: str) -> None:
    profile = PROFILES[model]
    asked = canon(model=model)
    out = degraded_canon(asked)
    assert out is not None
    assert (out["steps"], out["cache_threshold"], out["preset"]) == (
        profile.draft_steps, profile.draft_cache_threshold, "draft")
    # Everything else as asked; the effective parameters read back as a spec that renders them.
    assert {k: v for k, v in out.items() if k not in ("steps", "cache_threshold", "preset")} == {
        k: v for k, v in asked.items() if k not in ("steps", "cache_threshold", "preset")}
    assert spec_from_canonical(out).canonical() == out
    assert spec_from_canonical(out).job_key == parse_spec({"prompt": "a fox", "seed": 1, "model": model,
                                                           "preset": "draft"}).job_key
    assert compatibility_key(out) != compatibility_key(asked)


def test_never_more_quality_than_asked() -> None:
    assert degraded_canon(canon(preset="draft")) is None  # already the draft settings
    assert degraded_canon(canon(preset="draft", steps=2)) is None
    assert degraded_canon(canon(preset="custom", cache_threshold=0.5, steps=3)) is None  # cheaper already
    fewer = degraded_canon(canon(steps=2))  # fewer steps than the draft's: kept, step caching added
    assert fewer is not None and (fewer["steps"], fewer["cache_threshold"], fewer["preset"]) == (2, 0.2, "draft")
    rough = degraded_canon(canon(preset="custom", cache_threshold=0.5))  # a rougher threshold is kept
    assert rough is not None and (rough["steps"], rough["cache_threshold"], rough["preset"]) == (4, 0.5, "custom")
    assert spec_from_canonical(rough).canonical() == rough
    assert degraded_canon({**canon(), "model": "gone"}) is None  # a model this node does not know


def test_the_thresholds() -> None:
    waiting = FarmLoad(oldest_interactive_wait_s=42.0, serving_workers=5, busy_workers=4)
    assert not DegradePolicy().enabled and DegradePolicy().reason(waiting) is None
    assert DegradePolicy(wait_s=30).reason(waiting) == (
        "interactive queue oldest wait 42.0 s >= 30 s (FARM_DEGRADE_WAIT_S)")
    assert DegradePolicy(wait_s=60).reason(waiting) is None
    assert DegradePolicy(wait_s=0).reason(FarmLoad(None, 5, 5)) is None  # nobody waits
    assert DegradePolicy(busy_fraction=0.8).reason(waiting) == (
        "4/5 live workers busy (80%) >= 80% (FARM_DEGRADE_BUSY_FRACTION)")
    assert DegradePolicy(busy_fraction=0.9).reason(waiting) is None
    assert DegradePolicy(busy_fraction=0.1).reason(FarmLoad(None, 0, 0)) is None  # no live worker
    both = DegradePolicy(wait_s=60, busy_fraction=0.5)
    assert both.enabled and "FARM_DEGRADE_BUSY_FRACTION" in str(both.reason(waiting))


def test_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FARM_DEGRADE_WAIT_S", "FARM_DEGRADE_BUSY_FRACTION"):
        monkeypatch.delenv(name, raising=False)
    assert DegradePolicy.from_settings(Settings()) == DegradePolicy(None, None)
    monkeypatch.setenv("FARM_DEGRADE_WAIT_S", "0")
    monkeypatch.setenv("FARM_DEGRADE_BUSY_FRACTION", "")
    assert DegradePolicy.from_settings(Settings()) == DegradePolicy(0.0, None)
    monkeypatch.setenv("FARM_DEGRADE_BUSY_FRACTION", "0.8")
    assert Settings().degrade_busy_fraction == 0.8
    for bad in ("0", "1.5", "-1"):
        monkeypatch.setenv("FARM_DEGRADE_BUSY_FRACTION", bad)
        with pytest.raises(ValidationError):
            Settings()
    monkeypatch.setenv("FARM_DEGRADE_BUSY_FRACTION", "1")
    monkeypatch.setenv("FARM_DEGRADE_WAIT_S", "-1")
    with pytest.raises(ValidationError):
        Settings()
