"""The seed space is what torch's generator really uses: [0, 2^32-1].

Every strategy (explicit, sweep, pool, prompt-derived, random) lands in it, through every producer
door (the client's spec builder, manifests); a seed that differs from an accepted one only above
bit 32 is refused; the job key's spec version changed with the rule; and a row recorded under
the old rule (a seed above 2^32-1) comes back as the seed the generator used.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.client.specs import build_specs
from farm.errors import InvalidInput, ManifestError, SpecError
from farm.manifest import expand, parse_manifest
from farm.seeds import random_seed, seed_from_prompt, seeds_from_prompt, sweep
from farm.spec import MAX_SEED, SPEC_VERSION, canonical_json, parse_spec, spec_from_canonical

HYPOTHESIS = settings(deadline=None, database=None, max_examples=200)


def test_the_range_is_32_bits() -> None:
    assert MAX_SEED == 2**32 - 1
    assert SPEC_VERSION == "farm.spec/2"


@HYPOTHESIS
@given(prompt=st.text(min_size=1, max_size=40).filter(lambda t: t.strip() and t.isprintable()),
       salt=st.text(max_size=8))
def test_prompt_derived_seeds_are_in_range(prompt: str, salt: str) -> None:
    assert 0 <= seed_from_prompt(prompt, salt) <= MAX_SEED
    assert all(0 <= s <= MAX_SEED for s in seeds_from_prompt(prompt, 3, salt))


def test_a_derived_seed_keeps_the_bits_the_generator_used_before() -> None:
    # farm.spec/1 derived 63 bits; the generator used their low 32. The new seed is exactly those.
    old = int.from_bytes(hashlib.sha256(b"farm.seed.prompt/1\0\0a red fox").digest()[:8], "big") & (2**63 - 1)
    assert seed_from_prompt("a red fox") == old % 2**32


@HYPOTHESIS
@given(base=st.integers(0, MAX_SEED), radius=st.integers(0, 50))
def test_sweeps_stay_in_range(base: int, radius: int) -> None:
    seeds = sweep(base, radius)
    assert seeds and all(0 <= s <= MAX_SEED for s in seeds)


def test_random_seeds_are_in_range() -> None:
    assert all(0 <= random_seed() <= MAX_SEED for _ in range(2000))


@pytest.mark.parametrize("selection", [
    {"seed": MAX_SEED},
    {"seed_from_prompt_flag": True, "salt": "s"},
    {"sweep_of": (MAX_SEED - 1, 3)},
    {},  # random
])
def test_every_client_strategy_lands_in_range(selection: dict[str, object]) -> None:
    specs = build_specs("a lighthouse at dusk", model="tiny", **selection)  # type: ignore[arg-type]
    assert specs and all(0 <= s.seed <= MAX_SEED for s in specs)


def test_every_manifest_strategy_lands_in_range() -> None:
    text = f"""
seed_pool: [0, {MAX_SEED}]
items:
  - {{prompt: explicit, seeds: [0, {MAX_SEED}]}}
  - {{prompt: pool, seed: {{pool: 2}}}}
  - {{prompt: derived, seed: {{from_prompt: {{count: 5}}}}}}
  - {{prompt: swept, seed: {{sweep: {{base: {MAX_SEED}, radius: 2}}}}}}
  - {{prompt: drawn, seed: {{random: 20}}}}
"""
    batch = expand(parse_manifest(text, "yaml"))
    strategies = {j.spec.seed_strategy for j in batch.jobs}
    assert strategies == {"explicit", "pool", "prompt", "sweep", "random"}
    assert all(0 <= j.spec.seed <= MAX_SEED for j in batch.jobs)


@pytest.mark.parametrize("above", [2**32, 2**62])
def test_a_seed_differing_only_above_bit_32_is_refused_everywhere(above: int) -> None:
    accepted = parse_spec({"prompt": "a fox", "seed": 7, "model": "tiny"})
    twin = 7 + above
    with pytest.raises(SpecError) as info:
        parse_spec({"prompt": "a fox", "seed": twin, "model": "tiny"})
    [problem] = info.value.problems
    assert (problem.field, problem.rule) == ("seed", "seed_range")
    assert "2^32-1" in problem.message
    with pytest.raises(InvalidInput) as client_info:
        build_specs("a fox", seed=twin, model="tiny")
    assert [(p.field, p.rule) for p in client_info.value.problems] == [("seed", "seed_range")]
    with pytest.raises(ManifestError) as manifest_info:
        expand(parse_manifest(f"items:\n  - {{prompt: a fox, seeds: [7, {twin}]}}\n", "yaml"))
    assert any(p.rule == "seed_range" for p in manifest_info.value.problems)
    with pytest.raises(InvalidInput):
        sweep(twin, 1)
    assert accepted.seed == 7


def test_the_job_key_carries_the_new_spec_version() -> None:
    spec = parse_spec({"prompt": "a fox", "seed": 7, "model": "tiny"})
    payload = "farm.spec/2\n" + canonical_json(spec.render_params())
    assert spec.job_key == hashlib.sha256(payload.encode()).hexdigest()
    old = hashlib.sha256(("farm.spec/1\n" + canonical_json(spec.render_params())).encode()).hexdigest()
    assert spec.job_key != old  # keys recorded under the 63-bit rule can never collide with new ones


def test_a_row_recorded_with_a_larger_seed_comes_back_as_the_seed_the_generator_used() -> None:
    canon = parse_spec({"prompt": "a fox", "seed": 7, "model": "tiny"}).canonical()
    old_row = {**canon, "seed": 7 + 2**40}
    rebuilt = spec_from_canonical(old_row)
    assert rebuilt.seed == 7
    assert rebuilt.job_key == parse_spec({"prompt": "a fox", "seed": 7, "model": "tiny"}).job_key
