"""Degradation under load: when jobs that allow it render at their profile's ``draft`` settings.

A worker decides once per claimed batch, before rendering (:meth:`farm.worker.runner.JobRunner.decide_degradation`):
when the oldest queued interactive job has waited at least ``FARM_DEGRADE_WAIT_S`` seconds, or at
least ``FARM_DEGRADE_BUSY_FRACTION`` of the live workers are busy, each claimed job with
``allow_degrade`` renders with the ``draft`` preset's effect (:func:`degraded_canon`: the profile's
draft steps and step caching at its draft threshold); the others render as asked. The ledger keeps
what was asked (``params``, ``requested_params``) next to what rendered (``effective_params``) and
the reason (``degraded_reason``, event ``degraded``); a degraded output never answers another job.

Torch-free; reads the load through :meth:`farm.ledger.Ledger.farm_load`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from farm.kinds import Preset
from farm.profiles import PROFILES

if TYPE_CHECKING:
    from farm.ledger.stats import FarmLoad
    from farm.settings import Settings


@dataclass(frozen=True)
class Degraded:
    """One job's degraded render: the canonical spec it renders with, and why."""

    canon: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class DegradePolicy:
    """The thresholds (None: that trigger is off; both None: never degrade)."""

    #: Oldest queued interactive job's wait, in seconds, at or above which jobs degrade.
    wait_s: float | None = None
    #: Fraction (0, 1] of live workers busy at or above which jobs degrade.
    busy_fraction: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> DegradePolicy:
        """``FARM_DEGRADE_WAIT_S`` and ``FARM_DEGRADE_BUSY_FRACTION``."""
        return cls(settings.degrade_wait_s, settings.degrade_busy_fraction)

    @property
    def enabled(self) -> bool:
        """True when a threshold is set."""
        return self.wait_s is not None or self.busy_fraction is not None

    def reason(self, load: FarmLoad) -> str | None:
        """Why the farm is loaded enough to degrade (a short sentence naming the setting), or None."""
        wait = load.oldest_interactive_wait_s
        if self.wait_s is not None and wait is not None and wait >= self.wait_s:
            return f"interactive queue oldest wait {wait:.1f} s >= {self.wait_s:g} s (FARM_DEGRADE_WAIT_S)"
        fraction = load.busy_fraction
        if self.busy_fraction is not None and fraction is not None and fraction >= self.busy_fraction:
            return (f"{load.busy_workers}/{load.serving_workers} live workers busy ({fraction:.0%}) >= "
                    f"{self.busy_fraction:.0%} (FARM_DEGRADE_BUSY_FRACTION)")
        return None


def degraded_canon(canon: Mapping[str, Any]) -> dict[str, Any] | None:
    """The canonical spec ``canon`` degraded to its profile's ``draft`` settings; None when that changes nothing.

    Steps: the fewer of its own and the profile's draft steps. Step caching: the higher (more
    caching) of its own threshold and the profile's draft threshold. Preset: ``draft`` when the
    result is exactly the draft threshold, else ``custom`` (so the effective parameters read back as
    a valid spec that renders the same frames). A job that is already as cheap (or whose model is
    unknown here) renders as asked.
    """
    profile = PROFILES.get(str(canon.get("model")))
    if profile is None:
        return None
    steps = min(int(canon["steps"]), profile.draft_steps)
    own = canon.get("cache_threshold")
    threshold = max(float(own), profile.draft_cache_threshold) if own is not None else profile.draft_cache_threshold
    if steps == canon["steps"] and threshold == own:
        return None
    preset = Preset.DRAFT.value if threshold == profile.draft_cache_threshold else Preset.CUSTOM.value
    return {**canon, "steps": steps, "cache_threshold": float(threshold), "preset": preset}
