"""The OpenAPI schema carries farm's rules: the same numbers as the constants, and the same verdicts as the checks.

Two kinds of evidence. (1) Every number in the schema is the constant :mod:`farm.spec` (and
:mod:`farm.seeds`, :mod:`farm.client.library`, the profiles) checks with. (2) The schema and the
API's checks agree: a render request is valid under the schema (a JSON Schema 2020-12 validator)
exactly when :func:`farm.spec.parse_spec` (through the request's own ``specs()``) accepts it, for
hundreds of generated requests around every boundary (patterns read as JSON Schema reads them,
ECMA-262, by jsonschema-rs: what schemathesis uses); the same for labels, tag filters, the
``Idempotency-Key`` header and the prompt's "not blank" pattern. No services: the schema is built
from an app that is never started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from farm.api.app import create_app
from farm.api.lists import TAG_FILTER_PATTERN
from farm.api.patterns import beyond_bmp, header_value_pattern, matches, python_end_as_ecma
from farm.api.schemas import RenderRequest
from farm.client.core import MAX_IDEMPOTENCY_KEY_CHARS, check_idempotency_key
from farm.client.library import MAX_LABEL_CHARS, MAX_LABELS, normalize_label
from farm.client.reads import parse_tag_filter
from farm.errors import InvalidInput
from farm.profiles import PROFILES, SAMPLERS
from farm.seeds import MAX_SWEEP_RADIUS
from farm.settings import Settings
from farm.spec import (
    MAX_CACHE_THRESHOLD,
    MAX_FLOW_SHIFT,
    MAX_FPS,
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE_PX,
    MAX_STEPS,
    MAX_TAG_KEY_CHARS,
    MAX_TAG_VALUE_CHARS,
    MAX_TAGS,
    MIN_FPS,
    MIN_SIDE_PX,
    MIN_STEPS,
    SIDE_MULTIPLE_PX,
    TAG_KEY_PATTERN,
    OutputFormat,
    PresetName,
    Priority,
    parse_spec,
)

DEFAULT_MODEL = "tiny"


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data: Path = tmp_path_factory.mktemp("data")
    app = create_app(Settings(data_dir=data, api_token="unit-test-token-0123456789", default_model=DEFAULT_MODEL))
    return app.openapi()


def _value(prop: dict[str, Any]) -> dict[str, Any]:
    branches = [b for b in prop.get("anyOf", [prop]) if b != {"type": "null"}]
    assert len(branches) == 1, prop
    return branches[0]


def _validator(schema: dict[str, Any], name: str) -> Any:
    """A JSON Schema 2020-12 validator of component ``name`` (jsonschema-rs: ECMA-262 patterns, as schemathesis)."""
    return jsonschema_rs.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                               "components": schema["components"]})


# -- (1) the numbers are the constants -------------------------------------------------------------


def test_render_request_numbers_are_the_spec_constants(schema: dict[str, Any]) -> None:
    props = schema["components"]["schemas"]["RenderRequest"]["properties"]
    assert _value(props["seed"]) == {"type": "integer", "minimum": 0, "maximum": MAX_SEED}
    for side in ("width", "height"):
        assert _value(props[side]) == {"type": "integer", "minimum": MIN_SIDE_PX, "maximum": MAX_SIDE_PX,
                                       "multipleOf": SIDE_MULTIPLE_PX}
    assert _value(props["fps"]) == {"type": "integer", "minimum": MIN_FPS, "maximum": MAX_FPS}
    assert _value(props["steps"]) == {"type": "integer", "minimum": MIN_STEPS, "maximum": MAX_STEPS}
    for name in ("guidance_scale", "guidance_scale_2"):
        assert _value(props[name]) == {"type": "number", "minimum": 0, "maximum": MAX_GUIDANCE}
    assert _value(props["boundary_ratio"]) == {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
    assert _value(props["flow_shift"]) == {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_FLOW_SHIFT}
    assert _value(props["cache_threshold"]) == {"type": "number", "exclusiveMinimum": 0,
                                                "maximum": MAX_CACHE_THRESHOLD}
    assert props["prompt"]["maxLength"] == MAX_PROMPT_CHARS and _value(props["negative_prompt"])["maxLength"] == (
        MAX_PROMPT_CHARS)
    tags = props["tags"]
    assert tags["maxProperties"] == MAX_TAGS
    assert tags["propertyNames"] == {"minLength": 1, "maxLength": MAX_TAG_KEY_CHARS,
                                     "pattern": python_end_as_ecma(TAG_KEY_PATTERN)}
    assert tags["additionalProperties"]["maxLength"] == MAX_TAG_VALUE_CHARS
    sweep = schema["components"]["schemas"]["Sweep"]["properties"]
    assert (sweep["base"]["minimum"], sweep["base"]["maximum"]) == (0, MAX_SEED)
    assert (sweep["radius"]["minimum"], sweep["radius"]["maximum"]) == (0, MAX_SWEEP_RADIUS)


def test_enums_are_the_known_values(schema: dict[str, Any]) -> None:
    props = schema["components"]["schemas"]["RenderRequest"]["properties"]
    assert _value(props["model"])["enum"] == sorted(PROFILES)
    assert _value(props["sampler"])["enum"] == list(SAMPLERS)
    assert props["priority"]["enum"] == list(get_args(Priority))
    assert _value(props["preset"])["enum"] == list(get_args(PresetName))
    assert _value(props["output_format"])["enum"] == list(get_args(OutputFormat))
    status = {p["name"]: p for p in schema["paths"]["/v1/jobs"]["get"]["parameters"]}["status"]["schema"]
    assert status["enum"] == ["queued", "running", "succeeded", "failed", "cancelled"]


def test_num_frames_enum_is_every_count_the_spec_accepts(schema: dict[str, Any]) -> None:
    """Asked of parse_spec itself: the enum is exactly the accepted counts of the model with the most frames."""
    props = schema["components"]["schemas"]["RenderRequest"]["properties"]
    allowed = _value(props["num_frames"])["enum"]
    biggest = max(PROFILES.values(), key=lambda p: p.max_frames)
    accepted = []
    for n in range(-2, biggest.max_frames + 10):
        try:
            parse_spec({"prompt": "x", "seed": 1, "model": biggest.name, "num_frames": n})
        except InvalidInput:
            continue
        accepted.append(n)
    assert allowed == accepted


def test_labels_and_query_parameters(schema: dict[str, Any]) -> None:
    labels = schema["components"]["schemas"]["LabelsBody"]["properties"]["labels"]
    assert labels["maxItems"] == MAX_LABELS and "pattern" in labels["items"]
    params = {p["name"]: p["schema"] for p in schema["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert (params["limit"]["minimum"], params["limit"]["maximum"], params["limit"]["default"]) == (1, 500, 50)
    assert params["prompt"] == {**params["prompt"], "minLength": 1, "maxLength": MAX_PROMPT_CHARS}
    every_query = [p for path in schema["paths"].values() for op in path.values() for p in op.get("parameters", [])
                   if p["in"] == "query"]
    assert every_query and all("anyOf" not in p["schema"] and p["schema"].get("type") != "null"
                               for p in every_query)
    key = {p["name"]: p["schema"] for p in schema["paths"]["/v1/jobs"]["post"]["parameters"]}["Idempotency-Key"]
    assert (key["minLength"], key["maxLength"]) == (1, MAX_IDEMPOTENCY_KEY_CHARS)


def test_every_json_answer_is_typed(schema: dict[str, Any]) -> None:
    """Every documented JSON answer has a schema (a model), errors included."""
    untyped = []
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            for status, answer in op["responses"].items():
                for media, content in answer.get("content", {}).items():
                    if media == "application/json" and not content.get("schema"):
                        untyped.append((method, path, status))
    assert untyped == []
    jobs = schema["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert jobs["schema"] == {"$ref": "#/components/schemas/JobView"}


def test_no_rule_character_lies_beyond_the_bmp() -> None:
    """The patterns are derived from the BMP alone: nothing beyond it is a control, space or label character."""
    assert all(not found for found in beyond_bmp().values())


# -- (2) the schema and the checks agree --------------------------------------------------------------

SEEDS = st.sampled_from([-1, 0, 1, 7, 7.0, 7.5, MAX_SEED, MAX_SEED + 1, True])
SIDES = st.sampled_from([0, 16, 31, 32, 32.0, 33, 40.0, 48, 64, 96, 96.5, 2032, 2048, 2049, 2064, "64"])
NUMBERS = st.sampled_from([-1, -0.5, 0, 0.25, 0.5, 1, 1.0, 3, 4.5, 29.99, 30, 30.01, 31])
TEXTS = st.sampled_from(["", " ", "\t\n", "\u2028", "a", " a ", "a\x00b", "a\x85", "\x1f", "tab\tok", "\u00a0x"])
TAGS = st.dictionaries(st.sampled_from(["shot", "a.b:c/d-e_f", "", "bad key", "k" * 64, "k" * 65, "k\n"]),
                       st.sampled_from(["v", "", "x" * 256, "x" * 257, "a\x00", "line\nbreak"]), max_size=3)
OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "seed": st.none() | SEEDS,
    "seed_from_prompt": st.booleans(),
    "salt": st.sampled_from(["", "v1"]),
    "sweep": st.none() | st.fixed_dictionaries({"base": SEEDS, "radius": st.sampled_from(
        [-1, 0, 3, MAX_SWEEP_RADIUS, MAX_SWEEP_RADIUS + 1])}),
    "model": st.none() | st.sampled_from([*sorted(PROFILES), "nope"]),
    "priority": st.sampled_from(["interactive", "batch", "urgent"]),
    "negative_prompt": st.none() | TEXTS,
    "width": st.none() | SIDES,
    "height": st.none() | SIDES,
    "num_frames": st.none() | st.integers(-1, 250),
    "fps": st.none() | st.integers(-1, 62),
    "steps": st.none() | st.integers(-1, 152),
    "guidance_scale": st.none() | NUMBERS,
    "guidance_scale_2": st.none() | NUMBERS,
    "boundary_ratio": st.none() | NUMBERS,
    "flow_shift": st.none() | NUMBERS,
    "sampler": st.none() | st.sampled_from([*SAMPLERS, "ddim"]),
    "preset": st.none() | st.sampled_from(["final", "draft", "custom", "fast"]),
    "cache_threshold": st.none() | NUMBERS,
    "output_format": st.none() | st.sampled_from(["mp4", "mp4+frames", "gif"]),
    "allow_degrade": st.booleans(),
    "tags": TAGS,
}
#: Mostly valid values, so that the cross-field rules (seed sources, preset, the model's own) decide.
NEAR_VALID: dict[str, st.SearchStrategy[Any]] = {
    **OPTIONAL,
    "seed": st.none() | st.sampled_from([0, 7, MAX_SEED]),
    "sweep": st.none() | st.fixed_dictionaries({"base": st.sampled_from([0, 5]), "radius": st.sampled_from([0, 2])}),
    "model": st.none() | st.sampled_from(sorted(PROFILES)),
    "priority": st.sampled_from(["interactive", "batch"]),
    "negative_prompt": st.none() | st.sampled_from(["", "blurry"]),
    "width": st.none() | st.sampled_from([32, 48, 64, 2048]),
    "height": st.none() | st.sampled_from([32, 48, 64]),
    "num_frames": st.none() | st.sampled_from([1, 5, 33, 37, 81, 241]),
    "fps": st.none() | st.integers(MIN_FPS, MAX_FPS),
    "steps": st.none() | st.integers(MIN_STEPS, MAX_STEPS),
    "guidance_scale": st.none() | st.sampled_from([0, 1.0, 4.5, 30]),
    "guidance_scale_2": st.none() | st.sampled_from([0, 3.0]),
    "boundary_ratio": st.none() | st.sampled_from([0.25, 0.875]),
    "flow_shift": st.none() | st.sampled_from([0.5, 30]),
    "sampler": st.none() | st.sampled_from(list(SAMPLERS)),
    "cache_threshold": st.none() | st.sampled_from([0.1, 1]),
    "output_format": st.none() | st.sampled_from(["mp4", "mp4+frames"]),
    "tags": st.dictionaries(st.sampled_from(["shot", "a.b:c/d-e_f"]), st.sampled_from(["v", ""]), max_size=2),
}
REQUESTS = (st.fixed_dictionaries({"prompt": TEXTS | st.text(max_size=12)}, optional=OPTIONAL)
            | st.fixed_dictionaries({"prompt": st.sampled_from(["a fox", " an owl "])}, optional=NEAR_VALID))


def accepted(body: dict[str, Any]) -> bool:
    """What the API decides: the shape check, then every rule of the spec and the seed selection."""
    try:
        RenderRequest.model_validate(body).specs(DEFAULT_MODEL)
    except (ValidationError, InvalidInput):
        return False
    return True


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=REQUESTS)
def test_the_schema_accepts_a_render_request_exactly_when_the_spec_does(schema: dict[str, Any],
                                                                        body: dict[str, Any]) -> None:
    valid = _validator(schema, "RenderRequest").is_valid(body)
    assert valid == accepted(body), (body, [str(e) for e in _validator(schema, "RenderRequest").iter_errors(body)])


def test_the_agreement_test_sees_a_dropped_rule(schema: dict[str, Any]) -> None:
    """Guard the guard: without multipleOf, a width of 40 is schema-valid yet refused by the spec."""
    body = {"prompt": "a fox", "width": 40}
    assert not accepted(body) and not _validator(schema, "RenderRequest").is_valid(body)
    looser = {**schema, "components": {**schema["components"], "schemas": dict(schema["components"]["schemas"])}}
    request = dict(looser["components"]["schemas"]["RenderRequest"])
    props = dict(request["properties"])
    props["width"] = {"anyOf": [{"type": "integer", "minimum": MIN_SIDE_PX, "maximum": MAX_SIDE_PX}, {"type": "null"}]}
    looser["components"]["schemas"]["RenderRequest"] = {**request, "properties": props}
    assert _validator(looser, "RenderRequest").is_valid(body)


def test_known_limits_of_json_schema_are_documented(schema: dict[str, Any]) -> None:
    """The prompt's length is counted after normalisation: the schema says so (maxLength counts what is sent)."""
    prompt = schema["components"]["schemas"]["RenderRequest"]["properties"]["prompt"]
    assert "after normalisation" in prompt["description"]
    spaced = "a  " * (MAX_PROMPT_CHARS // 2)  # over maxLength as sent, within it once whitespace collapses
    assert accepted({"prompt": spaced, "seed": 1}) and len(spaced) > MAX_PROMPT_CHARS


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(alphabet=st.sampled_from("aZ09._- \t\n\u00a0\u212a\u0130!K"), max_size=44))
def test_label_pattern_is_the_label_rule(schema: dict[str, Any], value: str) -> None:
    pattern = schema["components"]["schemas"]["LabelsBody"]["properties"]["labels"]["items"]["pattern"]
    try:
        normalize_label(value)
        ok = True
    except InvalidInput:
        ok = False
    assert matches(pattern, value) == ok, value


@settings(max_examples=400, deadline=None)
@given(value=st.text(alphabet=st.sampled_from("ab:_/=-. \t\n\x00\x7f\u00e9!"), max_size=12)
       | st.sampled_from(["k" * 64, "k" * 65, "k=" + "v" * 256, "k=" + "v" * 257, "k\n", "k=v\n", "=v"]))
def test_tag_filter_pattern_is_the_tag_filter_rule(value: str) -> None:
    """The API takes a tag filter when its pattern matches; the client then takes it too, and refuses the rest.

    (A key ending in a newline, which the spec's own key check lets through, is no filter.)
    """
    if matches(TAG_FILTER_PATTERN, value):
        parse_tag_filter(value)
    elif "\n" not in value.partition("=")[0]:
        with pytest.raises(InvalidInput):
            parse_tag_filter(value)


@settings(max_examples=400, deadline=None)
@given(value=st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=8)
       | st.sampled_from(["", " ", "k" * 200, "k" * 201, " key", "key "]))
def test_idempotency_key_pattern_is_the_key_rule_as_http_carries_it(value: str) -> None:
    """HTTP drops the spaces around a header value: the pattern admits the values that arrive as sent."""
    try:
        check_idempotency_key(value)
        ok = value == value.strip(" ")
    except InvalidInput:
        ok = False
    assert matches(header_value_pattern(MAX_IDEMPOTENCY_KEY_CHARS), value) == ok, value


def test_label_rules_in_the_client() -> None:
    assert normalize_label("  Keeper ") == "keeper" and normalize_label("\u212a") == "k"  # (the Kelvin sign)
    for bad in ("", " ", "-x", "a b", "x" * (MAX_LABEL_CHARS + 1), "\u0130"):
        with pytest.raises(InvalidInput) as info:
            normalize_label(bad)
        assert [(p.field, p.rule) for p in info.value.problems] == [("labels", "label")]
