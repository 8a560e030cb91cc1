"""Speed presets in the spec: what each resolves to, the rules, the job key and the batching key."""

from __future__ import annotations

import typing

import pytest

from farm.api.schemas import RenderRequest
from farm.errors import SpecError
from farm.kinds import Preset, values
from farm.profiles import PROFILES
from farm.spec import (
    RENDER_FIELDS_V1,
    PresetName,
    RenderSpec,
    compat_digest,
    job_key_of,
    parse_spec,
    recorded_spec_version,
    spec_from_canonical,
)

BASE = {"prompt": "a kettle on a stove", "seed": 5, "model": "tiny"}


def canon(**fields: object) -> dict[str, object]:
    return parse_spec({**BASE, **fields}).canonical()


@pytest.mark.parametrize("model", sorted(PROFILES))
def test_each_preset_resolves_to_concrete_settings(model: str) -> None:
    p = PROFILES[model]
    final, draft = canon(model=model), canon(model=model, preset="draft")
    custom = canon(model=model, preset="custom", cache_threshold=0.3)
    assert (final["preset"], final["steps"], final["cache_threshold"]) == ("final", p.steps, None)
    assert (draft["preset"], draft["steps"], draft["cache_threshold"]) == ("draft", p.draft_steps,
                                                                            p.draft_cache_threshold)
    assert (custom["steps"], custom["cache_threshold"]) == (p.steps, 0.3)
    assert 0 < p.draft_steps < p.steps
    assert canon(model=model, preset="draft", steps=3)["steps"] == 3  # explicit steps win


def test_the_key_follows_what_is_rendered() -> None:
    keys = {name: parse_spec({**BASE, **f}).job_key for name, f in {
        "final": {}, "draft": {"preset": "draft"}, "custom": {"preset": "custom", "cache_threshold": 0.3},
        "custom-other": {"preset": "custom", "cache_threshold": 0.4},
    }.items()}
    assert len(set(keys.values())) == 4
    tiny = PROFILES["tiny"]
    same_as_draft = parse_spec({**BASE, "preset": "custom", "steps": tiny.draft_steps,
                                "cache_threshold": tiny.draft_cache_threshold})
    assert same_as_draft.job_key == keys["draft"]  # the same concrete settings: the same render, one key


def test_jobs_of_different_caching_are_never_batched_together() -> None:
    assert compat_digest(canon()) != compat_digest(canon(preset="custom", cache_threshold=0.3))
    assert compat_digest(canon(steps=4)) != compat_digest(canon(preset="custom", steps=4, cache_threshold=0.3))


@pytest.mark.parametrize(("fields", "rule"), [
    ({"preset": "custom"}, "required_by_preset"),
    ({"preset": "draft", "cache_threshold": 0.2}, "set_by_preset"),
    ({"cache_threshold": 0.2}, "set_by_preset"),
    ({"preset": "custom", "cache_threshold": 0.0}, "cache_threshold_range"),
    ({"preset": "custom", "cache_threshold": 1.5}, "cache_threshold_range"),
    ({"preset": "custom", "cache_threshold": float("nan")}, "finite"),
    ({"preset": "turbo"}, "one_of"),
])
def test_preset_rules(fields: dict[str, object], rule: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, **fields})
    assert any(p.rule == rule and p.field in ("preset", "cache_threshold") for p in info.value.problems), (
        info.value.problems
    )


def test_the_spec_round_trips_through_its_canonical_form() -> None:
    for fields in ({}, {"preset": "draft"}, {"preset": "custom", "cache_threshold": 0.25}):
        spec = parse_spec({**BASE, **fields})
        again = spec_from_canonical(spec.canonical())
        assert again.job_key == spec.job_key and again.preset == spec.preset


def test_a_farm_spec_1_row_without_presets_still_verifies_and_rebuilds() -> None:
    old = {k: v for k, v in canon().items() if k not in ("preset", "cache_threshold")}
    old_key = job_key_of({k: old[k] for k in sorted(RENDER_FIELDS_V1)}, version="farm.spec/1")
    assert recorded_spec_version(old, old_key) == "farm.spec/1"
    rebuilt = spec_from_canonical(old)
    assert rebuilt.preset == "final" and rebuilt.canonical()["cache_threshold"] is None


def test_one_set_of_preset_names_everywhere() -> None:
    assert typing.get_args(PresetName) == tuple(values(Preset))
    request_preset = RenderRequest.model_fields["preset"].annotation
    assert set(typing.get_args(typing.get_args(request_preset)[0])) == set(values(Preset))


def test_the_api_request_carries_every_spec_field() -> None:
    own = {"prompt", "model", "priority", "seed", "seed_strategy"}
    assert set(RenderSpec.model_fields) - own <= set(RenderRequest.model_fields)
