"""The render spec.

Every rule rejects what it should (property-based), canonical forms round-trip, and the job key
changes exactly when the render changes.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.errors import SpecError
from farm.profiles import PROFILES, SAMPLERS
from farm.spec import (
    MAX_FLOW_SHIFT,
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE_PX,
    MAX_STEPS,
    MAX_TAG_KEY_CHARS,
    MAX_TAGS,
    META_FIELDS,
    MIN_SIDE_PX,
    RENDER_FIELDS,
    RenderSpec,
    normalize_prompt,
    parse_spec,
    spec_from_canonical,
)

HYPOTHESIS = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MODELS = sorted(PROFILES)
TWO_EXPERT = sorted(m for m, p in PROFILES.items() if p.two_expert)
DENSE = sorted(m for m, p in PROFILES.items() if not p.two_expert)
DENSE_32 = sorted(m for m in DENSE if PROFILES[m].size_multiple == 32)
SMALL_MAX_FRAMES = sorted(m for m, p in PROFILES.items() if p.max_frames < 241)
SPEC_FIELDS = set(RenderSpec.model_fields)

# -- valid specs -------------------------------------------------------------------------------

# printable text: no control characters (Cc) and no lone surrogates (Cs)
_text_chars = st.characters(exclude_categories=("Cc", "Cs"))
prompts = st.text(_text_chars, min_size=1, max_size=120).filter(lambda t: bool(normalize_prompt(t)))
tag_keys = st.from_regex(r"\A[A-Za-z0-9_.:/-]{1,20}\Z")
tag_values = st.text(_text_chars, max_size=40)


def sides(multiple: int) -> st.SearchStrategy[int]:
    lo = -(-MIN_SIDE_PX // multiple)
    return st.integers(lo, MAX_SIDE_PX // multiple).map(lambda k: k * multiple)


@st.composite
def valid_spec_dicts(draw: st.DrawFn, models: list[str] = MODELS) -> dict[str, Any]:
    model = draw(st.sampled_from(models))
    profile = PROFILES[model]
    data: dict[str, Any] = {"prompt": draw(prompts), "seed": draw(st.integers(0, MAX_SEED)), "model": model}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "negative_prompt": st.text(_text_chars, max_size=60),
        "width": sides(profile.size_multiple),
        "height": sides(profile.size_multiple),
        "num_frames": st.integers(0, (profile.max_frames - 1) // 4).map(lambda k: 4 * k + 1),
        "fps": st.integers(1, 60),
        "steps": st.integers(1, MAX_STEPS),
        "guidance_scale": st.floats(0, MAX_GUIDANCE) | st.integers(0, int(MAX_GUIDANCE)),
        "flow_shift": st.floats(0, MAX_FLOW_SHIFT, exclude_min=True),
        "sampler": st.sampled_from(SAMPLERS),
        "output_format": st.sampled_from(["mp4", "mp4+frames"]),
        "priority": st.sampled_from(["interactive", "batch"]),
        "allow_degrade": st.booleans(),
        "tags": st.dictionaries(tag_keys, tag_values, max_size=4),
        "seed_strategy": st.sampled_from(["explicit", "pool", "prompt", "sweep", "random"]),
    }
    if profile.two_expert:
        optional["guidance_scale_2"] = st.floats(0, MAX_GUIDANCE)
        optional["boundary_ratio"] = st.floats(0, 1, exclude_min=True, exclude_max=True)
    for name, strategy in optional.items():
        if draw(st.booleans()):
            data[name] = draw(strategy)
    return data


# -- the catalogue of invalid mutations --------------------------------------------------------
# Each entry mutates a valid spec dict in place and returns (field, rule) the SpecError must name.

Mutation = Callable[[st.DataObject, dict[str, Any]], tuple[str, str]]


def _set(field: str, values: st.SearchStrategy[Any], rule: str) -> Mutation:
    def mutate(data: st.DataObject, spec: dict[str, Any]) -> tuple[str, str]:
        spec[field] = data.draw(values, label=field)
        return field, rule

    return mutate


def _on_model(models: list[str], field: str, values: st.SearchStrategy[Any], rule: str) -> Mutation:
    def mutate(data: st.DataObject, spec: dict[str, Any]) -> tuple[str, str]:
        spec["model"] = data.draw(st.sampled_from(models), label="model")
        if not PROFILES[spec["model"]].two_expert:
            spec.pop("guidance_scale_2", None)
            spec.pop("boundary_ratio", None)
        spec[field] = data.draw(values, label=field)
        return field, rule

    return mutate


def _delete(field: str) -> Mutation:
    def mutate(data: st.DataObject, spec: dict[str, Any]) -> tuple[str, str]:
        del spec[field]
        return field, "required"

    return mutate


def _control_char_in(field: str) -> Mutation:
    def mutate(data: st.DataObject, spec: dict[str, Any]) -> tuple[str, str]:
        text = spec.get(field) or "a prompt"
        bad = data.draw(st.characters(categories=["Cc"]).filter(lambda c: c not in "\t\n\r"), label="char")
        at = data.draw(st.integers(0, len(text)), label="at")
        spec[field] = text[:at] + bad + text[at:]
        return field, "no_control_chars"

    return mutate


def _unknown_field(data: st.DataObject, spec: dict[str, Any]) -> tuple[str, str]:
    name = data.draw(st.from_regex(r"\A[a-z_]{1,20}\Z").filter(lambda n: n not in SPEC_FIELDS), label="name")
    spec[name] = data.draw(st.integers() | st.text(max_size=5), label="value")
    return name, "unknown_field"


def _not_multiple_of_16() -> st.SearchStrategy[int]:
    return st.integers(MIN_SIDE_PX, MAX_SIDE_PX).filter(lambda v: v % 16 != 0)


def _multiple_of_16_not_32() -> st.SearchStrategy[int]:
    return (
        st.integers(MIN_SIDE_PX // 16, MAX_SIDE_PX // 16).filter(lambda k: k % 2 == 1).map(lambda k: 16 * k)
    )


not_4k_plus_1 = st.integers(-1000, 10_000).filter(lambda v: v < 1 or (v - 1) % 4 != 0)
non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
blank = st.text(st.sampled_from(" \t\n\r\u00a0\u2003\u3000"), max_size=12)
not_a_str = st.none() | st.integers() | st.lists(st.text(max_size=3), max_size=2) | st.booleans()
not_an_int = st.floats() | st.booleans() | st.text(max_size=6) | st.none()

CATALOGUE: dict[str, Mutation] = {
    "prompt blank": _set("prompt", blank, "not_blank"),
    "prompt control char": _control_char_in("prompt"),
    "prompt too long": _set(
        "prompt", st.integers(MAX_PROMPT_CHARS + 1, MAX_PROMPT_CHARS + 300).map("p".__mul__), "max_length"
    ),
    "prompt not text": _set("prompt", not_a_str, "type"),
    "prompt missing": _delete("prompt"),
    "seed negative": _set("seed", st.integers(max_value=-1), "seed_range"),
    "seed above 2^32-1": _set("seed", st.integers(MAX_SEED + 1, 2**80), "seed_range"),
    "seed not an int": _set("seed", not_an_int, "type"),
    "seed missing": _delete("seed"),
    "width not multiple of 16": _set("width", _not_multiple_of_16(), "multiple_of_16"),
    "height not multiple of 16": _set("height", _not_multiple_of_16(), "multiple_of_16"),
    "width out of bounds": _set(
        "width", st.integers(max_value=MIN_SIDE_PX - 1) | st.integers(MAX_SIDE_PX + 1), "size_bounds"
    ),
    "height out of bounds": _set(
        "height", st.integers(max_value=MIN_SIDE_PX - 1) | st.integers(MAX_SIDE_PX + 1), "size_bounds"
    ),
    "width a float": _set("width", st.floats(), "type"),
    "dense width not multiple of 32": _on_model(
        DENSE_32, "width", _multiple_of_16_not_32(), "multiple_of_32"
    ),
    "num_frames not 4k+1": _set("num_frames", not_4k_plus_1, "frames_4k_plus_1"),
    "num_frames above the model's max": _on_model(
        SMALL_MAX_FRAMES, "num_frames", st.integers(9, 60).map(lambda k: 4 * k + 1), "frames_bounds"
    ),
    "fps out of range": _set("fps", st.integers(max_value=0) | st.integers(61), "fps_range"),
    "steps out of range": _set("steps", st.integers(max_value=0) | st.integers(MAX_STEPS + 1), "steps_range"),
    "guidance not finite": _set("guidance_scale", non_finite, "finite"),
    "guidance out of range": _set(
        "guidance_scale",
        st.floats(max_value=-1e-9, allow_infinity=False)
        | st.floats(min_value=MAX_GUIDANCE + 1e-6, allow_infinity=False),
        "guidance_range",
    ),
    "guidance not a number": _set("guidance_scale", st.text(max_size=5) | st.booleans(), "type"),
    "guidance_2 not finite": _on_model(TWO_EXPERT, "guidance_scale_2", non_finite, "finite"),
    "boundary out of (0, 1)": _on_model(
        TWO_EXPERT,
        "boundary_ratio",
        st.floats(max_value=0.0, allow_infinity=False) | st.floats(min_value=1.0, allow_infinity=False),
        "boundary_range",
    ),
    "flow_shift out of range": _set(
        "flow_shift",
        st.floats(max_value=0.0, allow_infinity=False)
        | st.floats(min_value=MAX_FLOW_SHIFT + 1e-6, allow_infinity=False),
        "flow_shift_range",
    ),
    "unknown model": _set("model", st.text(max_size=20).filter(lambda m: m not in PROFILES), "known_model"),
    "unknown sampler": _set(
        "sampler", st.text(max_size=10).filter(lambda s: s not in SAMPLERS), "known_sampler"
    ),
    "unknown field": _unknown_field,
    "dense model with guidance_scale_2": _on_model(
        DENSE, "guidance_scale_2", st.floats(0, 10), "two_expert_only"
    ),
    "dense model with boundary_ratio": _on_model(
        DENSE, "boundary_ratio", st.floats(0.1, 0.9), "two_expert_only"
    ),
    "output_format unknown": _set(
        "output_format", st.text(max_size=8).filter(lambda f: f not in ("mp4", "mp4+frames")), "one_of"
    ),
    "priority unknown": _set(
        "priority", st.text(max_size=8).filter(lambda p: p not in ("interactive", "batch")), "one_of"
    ),
    "seed_strategy unknown": _set("seed_strategy", st.sampled_from(["seq", "hash", "", "Prompt"]), "one_of"),
    "allow_degrade not a bool": _set("allow_degrade", st.sampled_from(["yes", "true", 1, 0, None]), "type"),
    "negative_prompt control char": _control_char_in("negative_prompt"),
    "negative_prompt too long": _set(
        "negative_prompt",
        st.integers(MAX_PROMPT_CHARS + 1, MAX_PROMPT_CHARS + 50).map("n".__mul__),
        "max_length",
    ),
    "tag key malformed": _set(
        "tags",
        st.sampled_from(["", "has space", "x" * (MAX_TAG_KEY_CHARS + 1), "ümlaut", "a,b"]).map(
            lambda k: {k: "v"}
        ),
        "tags",
    ),
    "too many tags": _set("tags", st.just({f"k{i}": "v" for i in range(MAX_TAGS + 1)}), "tags"),
    "tag value with control char": _set("tags", st.just({"shot": "a\x00b"}), "tags"),
    "tag value not text": _set("tags", st.just({"shot": 3}), "type"),
}


def _rejection_check(name: str, examples: int, seen: list[str]) -> Callable[[], None]:
    @settings(HYPOTHESIS, max_examples=examples)
    @given(valid_spec_dicts(), st.data())
    def check(base: dict[str, Any], data: st.DataObject) -> None:
        spec = dict(base)
        field, rule = CATALOGUE[name](data, spec)
        with pytest.raises(SpecError) as info:
            parse_spec(spec, location="test")
        found = {(p.field, p.rule) for p in info.value.problems}
        assert (field, rule) in found, f"{name}: expected {(field, rule)}, got {found}"
        assert field in info.value.fields
        assert all(p.location == "test" for p in info.value.problems)
        seen.append(name)

    return check


def test_at_least_500_invalid_specs_are_rejected_with_field_and_rule() -> None:
    """Every entry of the catalogue, each on many generated valid specs: 600+ invalid specs."""
    seen: list[str] = []
    per_entry = -(-600 // len(CATALOGUE))
    for name in sorted(CATALOGUE):
        _rejection_check(name, per_entry, seen)()
    assert len(seen) >= 500
    assert set(seen) == set(CATALOGUE)


@pytest.mark.parametrize("data", [None, [], "prompt", 3])
def test_non_mapping_is_rejected(data: Any) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert info.value.problems[0].rule == "type"


# -- valid specs: canonical form and job key ---------------------------------------------------


@settings(HYPOTHESIS, max_examples=300)
@given(valid_spec_dicts())
def test_valid_specs_round_trip_through_the_canonical_form(data: dict[str, Any]) -> None:
    spec = parse_spec(data)
    canon = spec.canonical()
    again = parse_spec(canon)
    assert again.canonical() == canon
    assert again.job_key == spec.job_key
    assert spec_from_canonical(canon).job_key == spec.job_key
    assert list(canon) == sorted(canon)
    assert set(spec.render_params()) == set(RENDER_FIELDS)
    assert len(spec.job_key) == 64 and int(spec.job_key, 16) >= 0
    # every value of the canonical form is concrete where the profile has a default
    for name in ("width", "height", "num_frames", "fps", "steps", "guidance_scale", "flow_shift", "sampler"):
        assert canon[name] is not None


@st.composite
def whitespace_variants(draw: st.DrawFn) -> tuple[str, str]:
    words = draw(
        st.lists(
            st.text(_text_chars.filter(lambda c: not c.isspace()), min_size=1, max_size=8),
            min_size=1,
            max_size=6,
        )
    )
    spaces = st.text(st.sampled_from(" \t\n\r\u3000\u2003"), min_size=1, max_size=4)
    plain = " ".join(words)
    messy = draw(spaces) + "".join(w + draw(spaces) for w in words)
    return plain, messy


@settings(HYPOTHESIS, max_examples=200)
@given(whitespace_variants(), st.integers(0, MAX_SEED))
def test_whitespace_variants_of_a_prompt_give_the_same_key(variants: tuple[str, str], seed: int) -> None:
    plain, messy = variants
    assert (
        parse_spec({"prompt": plain, "seed": seed}).job_key
        == parse_spec({"prompt": messy, "seed": seed}).job_key
    )


@pytest.mark.parametrize(
    ("composed", "decomposed"),
    [
        ("Café au lait", "Cafe\u0301 au lait"),
        ("Ångström", "A\u030angstro\u0308m"),
        ("한국어", "\u1112\u1161\u11ab국어"),
    ],
)
def test_nfc_and_nfd_prompts_give_the_same_key(composed: str, decomposed: str) -> None:
    assert composed != decomposed and unicodedata.normalize("NFC", decomposed) == composed
    a = parse_spec({"prompt": composed, "seed": 5})
    b = parse_spec({"prompt": decomposed, "seed": 5})
    assert a.prompt == b.prompt == composed
    assert a.job_key == b.job_key


def _different(field: str, canon: dict[str, Any], spec: RenderSpec) -> Any:
    """A valid value for ``field`` different from the canonical one."""
    p = spec.profile
    value = canon[field]
    if field in ("prompt", "negative_prompt"):
        return (value + " x").strip()
    if field == "seed":
        return (value + 1) % (MAX_SEED + 1)
    if field in ("width", "height"):
        m = p.size_multiple
        return value + m if value + m <= MAX_SIDE_PX else value - m
    if field == "num_frames":
        return value + 4 if value + 4 <= p.max_frames else value - 4
    if field == "fps":
        return value + 1 if value < 60 else value - 1
    if field == "steps":
        return value + 1 if value < MAX_STEPS else value - 1
    if field in ("guidance_scale", "guidance_scale_2"):
        return value + 0.5 if value <= MAX_GUIDANCE - 0.5 else value - 0.5
    if field == "boundary_ratio":
        return (value + 1) / 2 if value < 0.5 else value / 2
    if field == "flow_shift":
        return value / 2 if value > 1 else value + 1
    return _different_choice(field, value)


def _different_choice(field: str, value: Any) -> Any:
    """:func:`_different` for the fields with a few choices."""
    if field == "sampler":
        return next(s for s in SAMPLERS if s != value)
    if field == "output_format":
        return "mp4+frames" if value == "mp4" else "mp4"
    if field == "cache_threshold":
        return 0.3 if value is None else value / 2
    raise AssertionError(field)


@settings(HYPOTHESIS, max_examples=300)
@given(valid_spec_dicts(), st.sampled_from(RENDER_FIELDS), st.sampled_from(MODELS))
def test_changing_any_render_field_changes_the_key(
    data: dict[str, Any], field: str, other_model: str
) -> None:
    spec = parse_spec(data)
    canon = spec.canonical()
    changed = spec.model_dump()
    if field == "model":
        if other_model == spec.model:
            other_model = next(m for m in MODELS if m != spec.model)
        changed.update(
            model=other_model,
            width=None,
            height=None,
            num_frames=None,
            guidance_scale_2=None,
            boundary_ratio=None,
        )
    elif field == "cache_threshold":  # only the custom preset takes one
        changed.update(preset="custom", cache_threshold=_different(field, canon, spec))
    elif field in ("guidance_scale_2", "boundary_ratio") and not spec.profile.two_expert:
        field = "seed"  # dense models have no such field: change the seed instead
        changed["seed"] = _different("seed", canon, spec)
    else:
        changed[field] = _different(field, canon, spec)
    other = parse_spec(changed)
    assert other.canonical()[field] != canon[field]
    assert other.job_key != spec.job_key


@settings(HYPOTHESIS, max_examples=200)
@given(valid_spec_dicts(), st.sampled_from(META_FIELDS), st.data())
def test_changing_metadata_keeps_the_key(data: dict[str, Any], field: str, draw: st.DataObject) -> None:
    spec = parse_spec(data)
    changed = spec.model_dump()
    if field == "priority":
        changed["priority"] = "batch" if spec.priority == "interactive" else "interactive"
    elif field == "allow_degrade":
        changed["allow_degrade"] = not spec.allow_degrade
    elif field == "tags":
        changed["tags"] = (
            {**spec.tags, "extra-tag": draw.draw(tag_values)} if len(spec.tags) < MAX_TAGS else {}
        )
    else:
        changed["seed_strategy"] = "random" if spec.seed_strategy != "random" else "explicit"
    other = parse_spec(changed)
    assert other.canonical() != spec.canonical()
    assert other.job_key == spec.job_key


def test_negative_zero_guidance_is_the_same_render_as_zero() -> None:
    a = parse_spec({"prompt": "x", "seed": 1, "guidance_scale": 0.0, "guidance_scale_2": 0.0})
    b = parse_spec({"prompt": "x", "seed": 1, "guidance_scale": -0.0, "guidance_scale_2": -0.0})
    assert a.job_key == b.job_key


def test_int_and_float_guidance_are_the_same_render() -> None:
    assert (
        parse_spec({"prompt": "x", "seed": 1, "guidance_scale": 4}).job_key
        == parse_spec({"prompt": "x", "seed": 1, "guidance_scale": 4.0}).job_key
    )


def test_explicit_profile_defaults_give_the_same_key_as_unset_fields() -> None:
    for model, p in PROFILES.items():
        unset = parse_spec({"prompt": "x", "seed": 1, "model": model})
        explicit = parse_spec(
            {
                "prompt": "x",
                "seed": 1,
                "model": model,
                "width": p.width,
                "height": p.height,
                "num_frames": p.num_frames,
                "fps": p.fps,
                "steps": p.steps,
                "guidance_scale": p.guidance_scale,
                "flow_shift": p.flow_shift,
                "sampler": p.sampler,
                "negative_prompt": p.negative_prompt,
            }
        )
        assert explicit.job_key == unset.job_key, model


def test_with_seed_changes_seed_and_strategy_only() -> None:
    spec = parse_spec({"prompt": "x", "seed": 1, "tags": {"a": "b"}})
    other = spec.with_seed(2, "sweep")
    assert (other.seed, other.seed_strategy) == (2, "sweep")
    assert {k: v for k, v in other.canonical().items() if k not in ("seed", "seed_strategy")} == {
        k: v for k, v in spec.canonical().items() if k not in ("seed", "seed_strategy")
    }
    with pytest.raises(SpecError):
        spec.with_seed(-1, "explicit")
