"""Request and response models of farm's HTTP API, and how validation errors become Problems.

The request model only checks *shape* (which fields exist, their JSON types); every rule of a
render spec is checked by :func:`farm.spec.parse_spec`, the same door the CLI and manifests use,
so the API reports the same field and rule names (``width: multiple_of_16``,
``num_frames: frames_4k_plus_1``, ``guidance_scale: finite``, ``model: known_model``, ...). The
OpenAPI schema carries those rules too (:mod:`farm.api.openapi_rules`), for generated clients and
fuzzers; an integer field takes any JSON number with an integral value (``32.0``), as JSON Schema's
``integer`` does.

Error bodies are always ``{"error": ..., "problems": [{"field", "rule", "message"}, ...]}``
(:func:`problem_body`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from farm.errors import InvalidInput, Problem
from farm.spec import RenderSpec

Number = StrictFloat | StrictInt


def _whole(value: Any) -> Any:
    """A JSON number with an integral value as the integer it is (``32.0`` is 32); anything else unchanged.

    JSON has one number type, and JSON Schema's ``integer`` admits ``32.0``: the API reads it as the
    schema does. A fractional number (``32.5``), a bool or a string still fails the integer check
    (rule ``type``), and the spec's own rules then apply to the integer.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer field of a request body: a JSON number with an integral value (see :func:`_whole`).
JsonInt = Annotated[StrictInt, BeforeValidator(_whole)]

#: Spec fields a render request may carry: every field of :class:`RenderSpec` but the prompt, the
#: model and the priority (top-level request fields) and the seed and its strategy (which the
#: request's seed selection decides). Derived, so a new spec field is never silently dropped.
REQUEST_OWN_FIELDS: frozenset[str] = frozenset({"prompt", "model", "priority", "seed", "seed_strategy"})
SPEC_FIELDS: tuple[str, ...] = tuple(f for f in RenderSpec.model_fields if f not in REQUEST_OWN_FIELDS)
#: Stands in for a missing or malformed prompt while the other fields' rules are checked.
_PLACEHOLDER_PROMPT = "placeholder"
#: Where FastAPI puts the part of the request an error is about (dropped from the field name).
_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})


class Sweep(BaseModel):
    """Seeds ``base - radius .. base + radius`` (one job per seed)."""

    model_config = ConfigDict(extra="forbid")

    base: JsonInt
    radius: JsonInt


class RenderRequest(BaseModel):
    """One render request: a prompt, at most one seed selection, and any spec fields.

    Seed selection (at most one): ``seed`` (explicit), ``seed_from_prompt`` (+ optional ``salt``),
    ``sweep``; none of them draws a random seed (recorded with the job).
    """

    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr
    seed: JsonInt | None = Field(
        default=None, description="Explicit seed in [0, 2^32-1] (torch's generator keeps 32 bits)."
    )
    seed_from_prompt: StrictBool = Field(default=False, description="Derive the seed from the prompt (sha256).")
    salt: StrictStr = Field(default="", description="Salt of seed_from_prompt.")
    sweep: Sweep | None = None
    model: StrictStr | None = Field(default=None, description="Model profile (default: the farm's default).")
    priority: Literal["interactive", "batch"] = "interactive"
    no_cache: StrictBool = Field(default=False, description="Render even if an identical output exists.")
    negative_prompt: StrictStr | None = None
    width: JsonInt | None = None
    height: JsonInt | None = None
    num_frames: JsonInt | None = None
    fps: JsonInt | None = None
    steps: JsonInt | None = None
    guidance_scale: Number | None = None
    guidance_scale_2: Number | None = None
    boundary_ratio: Number | None = None
    flow_shift: Number | None = None
    sampler: StrictStr | None = None
    preset: Literal["final", "draft", "custom"] | None = Field(
        default=None, description="Speed preset: final (exact), draft (fewer steps + step caching), custom."
    )
    cache_threshold: Number | None = Field(default=None, description="Step caching threshold (preset custom).")
    output_format: Literal["mp4", "mp4+frames"] | None = None
    allow_degrade: StrictBool = False
    tags: dict[StrictStr, StrictStr] = Field(default_factory=dict)

    def spec_fields(self) -> dict[str, Any]:
        """The spec fields that were given (unset ones take the model profile's defaults)."""
        given = {name: getattr(self, name) for name in SPEC_FIELDS}
        return {k: v for k, v in given.items() if v is not None and not (k == "tags" and not v)}

    def client_kwargs(self, default_model: str) -> dict[str, Any]:
        """Keyword arguments of :meth:`farm.client.Client.submit_detailed`.

        It checks every rule through :func:`farm.client.specs.build_specs` before anything is
        written. A request without a model gets ``default_model`` (FARM_DEFAULT_MODEL), as on the
        CLI.
        """
        return {
            "seed": self.seed,
            "seed_from_prompt": self.seed_from_prompt,
            "salt": self.salt,
            "sweep": None if self.sweep is None else (self.sweep.base, self.sweep.radius),
            "model": default_model if self.model is None else self.model,
            "priority": self.priority,
            "no_cache": self.no_cache,
            **self.spec_fields(),
        }

    def specs(self, default_model: str) -> list[RenderSpec]:
        """The checked render specs of this request (one per seed; :class:`InvalidInput` naming each broken rule).

        A random seed is drawn here only to check the rest of the spec.
        """
        from farm.client.specs import build_specs

        return build_specs(
            self.prompt, seed=self.seed, seed_from_prompt_flag=self.seed_from_prompt, salt=self.salt,
            sweep_of=None if self.sweep is None else (self.sweep.base, self.sweep.radius),
            model=default_model if self.model is None else self.model, priority=self.priority,
            fields=self.spec_fields(),
        )


class JobsCreated(BaseModel):
    """Answer to ``POST /v1/jobs``.

    201 when the jobs were created and sent, 202 when they were recorded but the broker could not
    be reached in time (``not_sent``: the reaper sends them; nothing is lost), 200 when an
    ``Idempotency-Key`` named jobs created earlier (the same ids, nothing created or sent again).
    """

    job_ids: list[str]
    created: bool
    enqueued: int = Field(description="Wake-up messages sent by this request (cache hits and followers get none).")
    not_sent: int = Field(default=0, description="Jobs recorded whose message is not sent yet (the reaper sends "
                          "them; answered with 202).")


class BatchCreated(BaseModel):
    """Answer to ``POST /v1/batches`` (201 new batch, 200 the same manifest submitted before)."""

    batch_id: str
    job_count: int
    created: bool
    enqueued: int = Field(description="Messages sent by this request (only never-sent jobs on a repeat).")
    not_sent: int = Field(default=0, description="Jobs recorded whose message is not sent yet (the reaper sends "
                          "them; answered with 202).")
    name: str
    digest: str


class BatchView(BaseModel):
    """A batch and how many of its jobs are in each status."""

    id: str
    name: str
    source_name: str
    manifest_digest: str
    created_at: str
    job_count: int
    counts: dict[str, int] = Field(description="Jobs per status (every status, zeros included).")
    done: bool = Field(description="True when every job is succeeded, failed or cancelled.")
    waiting: list[str] = Field(default_factory=list, description="Why queued jobs cannot start (e.g. no live "
                               "worker serves their model); empty when they only wait their turn.")


class BatchResults(BaseModel):
    """The results of a batch: one row per job."""

    batch_id: str
    results: list[dict[str, Any]] = Field(
        description="One row per job in manifest order: job_id, batch_index, status, prompt, seed, params, "
                    "hashes, timings, error, degradation (allow_degrade, degraded_reason, requested_steps, "
                    "effective_steps), video_url / poster_url once succeeded."
    )


class ProblemItem(BaseModel):
    """One broken rule: the field, the rule, a message and, when known, where (e.g. a manifest item)."""

    field: str
    rule: str
    message: str
    location: str | None = None


class ErrorBody(BaseModel):
    """The body of every error answer: the error's name and the broken rules."""

    error: str
    problems: list[ProblemItem] = Field(default_factory=list)


# -- errors ------------------------------------------------------------------------------------


def problem_body(error: str, problems: Iterable[Problem]) -> dict[str, Any]:
    """The JSON of every error answer."""
    return {"error": error, "problems": [p.as_dict() for p in problems]}


def _field_name(loc: Sequence[Any]) -> str:
    parts = [str(x) for x in loc]
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    # Union members appear as extra loc entries (e.g. "float", "int"): not part of the field name.
    parts = [p for p in parts if p not in ("float", "int", "str", "bool")]
    if not parts:
        return str(loc[0]) if loc else "body"
    return ".".join(parts)


def problems_from_errors(errors: Iterable[Mapping[str, Any]]) -> list[Problem]:
    """Problems (field, rule, message) from pydantic/FastAPI validation errors.

    With the rule names :mod:`farm.spec` uses (``unknown_field``, ``required``, ``type``,
    ``one_of``, ``json``).
    """
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for err in errors:
        loc = tuple(err.get("loc", ()))
        kind = str(err.get("type", "invalid"))
        field = _field_name(loc)
        if kind == "extra_forbidden":
            rule, message = "unknown_field", "is not a field of this request"
        elif kind == "missing":
            rule, message = "required", "is required"
        elif kind == "json_invalid":
            field, rule, message = "body", "json", f"is not valid JSON: {err.get('msg', '')}"
        elif kind == "literal_error":
            rule, message = "one_of", str(err.get("msg", ""))
        elif kind.endswith("_type") or kind in ("int_from_float", "bool_parsing", "int_parsing"):
            rule, message = "type", str(err.get("msg", ""))
        else:
            rule, message = kind, str(err.get("msg", ""))
        if (field, rule) in seen:  # a union reports each member: keep one problem per field and rule
            continue
        seen.add((field, rule))
        problems.append(Problem(field, rule, message))
    return problems


def rule_problems(body: Any, shape_problems: Sequence[Problem], default_model: str) -> list[Problem]:
    """The render spec rules broken by the well-shaped fields of a ``POST /v1/jobs`` body.

    For a body whose other fields failed the shape check (``shape_problems``: unknown fields,
    wrong JSON types, missing ones). FastAPI stops at the shape check; this lets one 422 list
    every problem.

    Fields with a shape problem are left out (a missing or malformed prompt is replaced by a
    placeholder); nothing is checked when the model itself is malformed (every rule depends on
    its profile) or when the body is not a JSON object.
    """
    if not isinstance(body, dict):
        return []
    bad = {p.field.split(".", 1)[0] for p in shape_problems}
    if "model" in bad or "body" in bad:
        return []
    rest = {k: v for k, v in body.items() if k in RenderRequest.model_fields and k not in bad}
    if "prompt" in bad:
        rest["prompt"] = _PLACEHOLDER_PROMPT
    try:
        request = RenderRequest.model_validate(rest)
        request.specs(default_model)
    except ValidationError:  # not expected: every field left passed the shape check
        return []
    except InvalidInput as exc:
        return [p for p in exc.problems if p.field.split(".", 1)[0] not in bad]
    return []
