"""The spec's rules in the OpenAPI schema, so that a generated client or a fuzzer knows them.

The request models of :mod:`farm.api.schemas` only check *shape*; every rule of a render is
checked by :func:`farm.spec.parse_spec` (and :mod:`farm.client.specs` for the seed selection),
which stays the source of truth. :func:`apply_rules` writes the same rules into the generated
schema, from the same constants and functions, never looser and never stricter than what the API
accepts:

* ranges (``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum``): seed, sweep base and
  radius, width/height, fps, steps, guidance, boundary ratio, flow shift, cache threshold;
* ``multipleOf``: width/height (16, and the model's own multiple);
* enums: model (the profiles known when the app starts), sampler, and ``num_frames`` (every
  ``4k+1`` up to the largest model's ``max_frames``);
* strings: the prompt not blank (a pattern) and at most ``MAX_PROMPT_CHARS`` characters, no control
  characters in prompts and tag values, tag keys, tag counts and lengths;
* cross-field rules, in ``allOf`` (each entry's ``description`` names farm's rule):
  ``one_seed_source`` (``not`` both of seed / seed_from_prompt / sweep), ``needs_seed_from_prompt``
  (a salt only with seed_from_prompt), ``required_by_preset`` / ``set_by_preset`` (cache threshold
  with preset ``custom`` only), and the model's own rules in one ``anyOf`` branch per model (the
  farm's default model when ``model`` is absent or null): its size multiple, its ``max_frames``,
  ``two_expert_only`` fields;
* the ``Idempotency-Key`` header: 1-200 printable characters (Latin-1, as HTTP carries it);
* review labels (``PUT /v1/jobs/{job_id}/labels``): at most 16, each a label
  (:mod:`farm.client.library`).

What JSON Schema cannot say exactly, documented in the schema too: the prompt's length is counted
after normalisation (NFC, whitespace runs collapsed, trimmed), ``maxLength`` counts the text as sent.
(JSON Schema's ``integer`` admits ``32.0``; so does the API: :data:`farm.api.schemas.JsonInt`.)

Query parameters are never ``null`` (absent is their "none"): :func:`apply_rules` drops the ``null``
branch pydantic gives optional ones.
"""

from __future__ import annotations

from typing import Any

from farm.api.patterns import (
    header_value_pattern,
    label_pattern,
    no_control_pattern,
    not_blank_pattern,
    python_end_as_ecma,
)
from farm.api.routes import IDEMPOTENCY_HEADER
from farm.client.core import MAX_IDEMPOTENCY_KEY_CHARS
from farm.client.library import MAX_LABEL_CHARS, MAX_LABELS
from farm.profiles import PROFILES, SAMPLERS, ModelProfile
from farm.seeds import MAX_SWEEP_RADIUS
from farm.spec import (
    FRAMES_MULTIPLE,
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
)

#: Fields only two-expert models take.
TWO_EXPERT_FIELDS = ("guidance_scale_2", "boundary_ratio")
_NULL = {"type": "null"}


def frames_allowed(max_frames: int) -> list[int]:
    """Every frame count the spec accepts up to ``max_frames``: ``FRAMES_MULTIPLE * k + 1``."""
    return list(range(1, max_frames + 1, FRAMES_MULTIPLE))


def _value_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null schema of a property (the property itself, or its one non-null ``anyOf`` branch)."""
    branches = [b for b in prop.get("anyOf", []) if b != _NULL]
    if len(branches) == 1:
        return dict(branches[0])
    if "anyOf" in prop:
        raise ValueError(f"cannot constrain a property with several non-null branches: {prop}")
    return prop


def _constrain(props: dict[str, Any], name: str, **rules: Any) -> None:
    """Add ``rules`` to the value schema of property ``name`` (its null branch, if any, is kept)."""
    prop = props[name]
    value = _value_schema(prop)
    value.update(rules)
    if "anyOf" in prop:
        prop["anyOf"] = [value, _NULL]


def _field_rules(props: dict[str, Any]) -> None:
    """The single-field rules of a render request."""
    prompt_note = ("counted after normalisation (NFC, whitespace runs collapsed to one space, trimmed); "
                   "maxLength counts the text as sent")
    _constrain(props, "prompt", pattern=not_blank_pattern(), maxLength=MAX_PROMPT_CHARS,
               description=f"Not blank, no control characters but tab/newline/CR, at most {MAX_PROMPT_CHARS} "
                           f"characters ({prompt_note}).")
    _constrain(props, "negative_prompt", pattern=no_control_pattern(), maxLength=MAX_PROMPT_CHARS,
               description=f"No control characters but tab/newline/CR, at most {MAX_PROMPT_CHARS} characters "
                           f"({prompt_note}).")
    _constrain(props, "seed", minimum=0, maximum=MAX_SEED)
    _constrain(props, "model", enum=sorted(PROFILES))
    for side in ("width", "height"):
        _constrain(props, side, minimum=MIN_SIDE_PX, maximum=MAX_SIDE_PX, multipleOf=SIDE_MULTIPLE_PX)
    most_frames = max(p.max_frames for p in PROFILES.values())
    _constrain(props, "num_frames", enum=frames_allowed(most_frames))
    _constrain(props, "fps", minimum=MIN_FPS, maximum=MAX_FPS)
    _constrain(props, "steps", minimum=MIN_STEPS, maximum=MAX_STEPS)
    for name in ("guidance_scale", "guidance_scale_2"):
        props[name] = {**props[name], "anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_GUIDANCE}, _NULL]}
    props["boundary_ratio"] = {**props["boundary_ratio"],
                               "anyOf": [{"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, _NULL]}
    props["flow_shift"] = {**props["flow_shift"],
                           "anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": MAX_FLOW_SHIFT}, _NULL]}
    props["cache_threshold"] = {**props["cache_threshold"], "anyOf": [
        {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_CACHE_THRESHOLD}, _NULL]}
    _constrain(props, "sampler", enum=list(SAMPLERS))
    _constrain(props, "tags", maxProperties=MAX_TAGS,
               propertyNames={"minLength": 1, "maxLength": MAX_TAG_KEY_CHARS,
                              "pattern": python_end_as_ecma(TAG_KEY_PATTERN)},
               additionalProperties={"type": "string", "maxLength": MAX_TAG_VALUE_CHARS,
                                     "pattern": no_control_pattern()})


def _present(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": [name], "properties": {name: schema}}


def _both(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return {"required": first["required"] + second["required"],
            "properties": {**first["properties"], **second["properties"]}}


def _seed_rules() -> list[dict[str, Any]]:
    """``one_seed_source`` (at most one of seed, seed_from_prompt, sweep) and ``needs_seed_from_prompt``."""
    seed = _present("seed", {"type": "integer"})
    from_prompt = _present("seed_from_prompt", {"const": True})
    sweep = _present("sweep", {"type": "object"})
    exclusive = [{"description": f"one_seed_source: not both {a['required'][0]} and {b['required'][0]}",
                  "not": _both(a, b)} for a, b in ((seed, from_prompt), (seed, sweep), (from_prompt, sweep))]
    salt = {"description": "needs_seed_from_prompt: a non-empty salt only with seed_from_prompt",
            "anyOf": [{"properties": {"salt": {"maxLength": 0}}}, from_prompt]}
    return [*exclusive, salt]


def _preset_rule() -> dict[str, Any]:
    """``required_by_preset`` / ``set_by_preset``: a cache threshold exactly when the preset is ``custom``."""
    return {"description": "required_by_preset / set_by_preset: cache_threshold with preset custom, and only then",
            "anyOf": [{"required": ["preset", "cache_threshold"],
                       "properties": {"preset": {"const": "custom"}, "cache_threshold": {"type": "number"}}},
                      {"properties": {"preset": {"enum": ["final", "draft", None]}, "cache_threshold": _NULL}}]}


def _profile_rules(profile: ModelProfile) -> dict[str, Any]:
    """What one model's profile adds to the spec's rules (its size multiple, frames, two-expert fields)."""
    rules: dict[str, Any] = {"num_frames": {"maximum": profile.max_frames}}
    if profile.size_multiple != SIDE_MULTIPLE_PX:
        rules.update(width={"multipleOf": profile.size_multiple}, height={"multipleOf": profile.size_multiple})
    if not profile.two_expert:
        rules.update(dict.fromkeys(TWO_EXPERT_FIELDS, _NULL))
    return rules


def _model_rule(default_model: str) -> dict[str, Any]:
    """One branch per model (``model`` names it), and the default model's when ``model`` is absent or null."""
    branches: list[dict[str, Any]] = [
        {"required": ["model"], "properties": {"model": {"const": name}, **_profile_rules(profile)}}
        for name, profile in sorted(PROFILES.items())
    ]
    if default_model in PROFILES:  # (an unknown default model fails every request without a model)
        branches.append({"properties": {"model": _NULL, **_profile_rules(PROFILES[default_model])}})
    return {"description": f"the model's rules (multiple_of_N, frames_bounds, two_expert_only); without a model, "
                           f"the farm's default ({default_model})", "anyOf": branches}


def render_request_rules(schema: dict[str, Any], default_model: str) -> None:
    """Write the spec's rules into the ``RenderRequest`` schema (and its ``Sweep``) in place."""
    props = schema["properties"]
    _field_rules(props)
    schema["allOf"] = [*_seed_rules(), _preset_rule(), _model_rule(default_model)]


def sweep_rules(schema: dict[str, Any]) -> None:
    """``Sweep``: a base seed in the seed range and a radius in [0, MAX_SWEEP_RADIUS]."""
    schema["properties"]["base"].update(minimum=0, maximum=MAX_SEED)
    schema["properties"]["radius"].update(minimum=0, maximum=MAX_SWEEP_RADIUS)


def labels_rules(schema: dict[str, Any]) -> None:
    """``LabelsBody``: at most MAX_LABELS labels, each one :func:`farm.client.library.normalize_label` takes."""
    schema["properties"]["labels"].update(
        maxItems=MAX_LABELS,
        items={"type": "string", "pattern": label_pattern()},
        description=f"At most {MAX_LABELS} labels; each, once stripped and lowercased, 1-{MAX_LABEL_CHARS} "
                    "characters of [a-z0-9][a-z0-9._-]* (rules max_labels, label).")


def _parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [param for path in schema.get("paths", {}).values() for operation in path.values()
            if isinstance(operation, dict) for param in operation.get("parameters", [])]


def parameter_rules(schema: dict[str, Any]) -> None:
    """Query parameters without a ``null`` branch; the ``Idempotency-Key`` header with its rule."""
    for param in _parameters(schema):
        if param.get("in") == "query" and "anyOf" in param["schema"]:
            value = _value_schema(param["schema"])
            rest = {k: v for k, v in param["schema"].items() if k not in ("anyOf", "default")}
            param["schema"] = {**value, **rest}
        if param.get("in") == "header" and param.get("name") == IDEMPOTENCY_HEADER:
            param["schema"] = {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_CHARS,
                               "pattern": header_value_pattern(MAX_IDEMPOTENCY_KEY_CHARS),
                               "description": f"1-{MAX_IDEMPOTENCY_KEY_CHARS} printable characters: the same key "
                                              "again answers with the first request's result."}


def apply_rules(schema: dict[str, Any], *, default_model: str) -> dict[str, Any]:
    """The OpenAPI ``schema`` with farm's rules written in (in place; also returned)."""
    components = schema.get("components", {}).get("schemas", {})
    if "RenderRequest" in components:
        render_request_rules(components["RenderRequest"], default_model)
    if "Sweep" in components:
        sweep_rules(components["Sweep"])
    if "LabelsBody" in components:
        labels_rules(components["LabelsBody"])
    parameter_rules(schema)
    return schema
