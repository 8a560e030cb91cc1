"""The render job spec: one validated model of every parameter a render takes.

``parse_spec(data)`` is the one door: it checks every rule up front and raises
:class:`farm.errors.SpecError` whose problems name the field and the rule. A valid spec has a
*canonical form* (normalised prompts, defaults filled from the model profile, sorted keys) and a
*job key*: the sha256 of the canonical render parameters, the identity used for dedup and
re-render. Metadata that does not change the frames (priority, tags, whether the job may be
degraded, how its seed was chosen) is part of the canonical form but not of the key.

Torch-free: producers import this.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from farm.errors import Problem, SpecError
from farm.kinds import Preset
from farm.profiles import PROFILES, SAMPLERS, ModelProfile
from farm.settings import DEFAULT_MODEL

# -- documented limits -------------------------------------------------------------------------
#: Seeds are 32-bit: torch's CPU generator (mt19937) keeps the low 32 bits of what
#: ``manual_seed`` gets, so 7, 7 + 2^32 and 7 + 2^62 draw the same noise. farm's seed space is
#: exactly what the generator uses, so that two different seeds never render the same frames.
MAX_SEED = 2**32 - 1
#: How the seed rule reads in messages and docs.
SEED_RANGE_TEXT = "[0, 2^32-1] (4294967295; torch's generator keeps 32 bits)"
MAX_PROMPT_CHARS = 2000
MIN_SIDE_PX = 32
MAX_SIDE_PX = 2048
#: Width and height are multiples of this (and of the model's ``size_multiple``).
SIDE_MULTIPLE_PX = 16
#: Frame counts are ``FRAMES_MULTIPLE * k + 1`` (and at most the model's ``max_frames``).
FRAMES_MULTIPLE = 4
MIN_FPS = 1
MAX_FPS = 60
MIN_STEPS = 1
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
#: A guidance scale <= this runs no classifier-free guidance (see :func:`guidance_rendered`).
GUIDANCE_OFF = 1.0
MAX_FLOW_SHIFT = 30.0
#: Step caching's threshold (First Block Cache: the relative change of the first block's residual
#: below which a step reuses the rest of the transformer's last output) lies in (0, this].
MAX_CACHE_THRESHOLD = 1.0
MAX_TAGS = 32
MAX_TAG_KEY_CHARS = 64
MAX_TAG_VALUE_CHARS = 256
#: Version of the canonical form; part of every job key, so a change of canonicalisation rules
#: can never silently collide with old keys.
#: farm.spec/2: seeds are 32-bit (farm.spec/1 took [0, 2^63-1]: the generator used the low 32 bits),
#: guidance <= 1 is canonically 1.0, and step caching (``cache_threshold``) is a render field.
SPEC_VERSION = "farm.spec/2"
#: Every version a recorded job key may carry, newest first.
SPEC_VERSIONS: tuple[str, ...] = (SPEC_VERSION, "farm.spec/1")

OutputFormat = Literal["mp4", "mp4+frames"]
Priority = Literal["interactive", "batch"]
SeedStrategy = Literal["explicit", "pool", "prompt", "sweep", "random"]
PresetName = Literal["final", "draft", "custom"]

#: Fields that change the frames or the output bytes: these make the job key.
RENDER_FIELDS: tuple[str, ...] = (
    "prompt",
    "negative_prompt",
    "seed",
    "model",
    "width",
    "height",
    "num_frames",
    "fps",
    "steps",
    "guidance_scale",
    "guidance_scale_2",
    "boundary_ratio",
    "flow_shift",
    "sampler",
    "output_format",
    "cache_threshold",
)
#: The render fields of ``farm.spec/1`` (before step caching): how its job keys were made.
RENDER_FIELDS_V1: tuple[str, ...] = tuple(f for f in RENDER_FIELDS if f != "cache_threshold")
#: Fields K jobs must share to be rendered together with expert-phase batching (the scheduler's
#: timesteps and the switch step, the latent shape, the model). Prompts, seeds and guidance differ.
COMPAT_FIELDS: tuple[str, ...] = (
    "model",
    "width",
    "height",
    "num_frames",
    "steps",
    "sampler",
    "flow_shift",
    "boundary_ratio",
    "cache_threshold",
)
#: Fields recorded with the job that do not change its output. (The preset's *effect*, its steps
#: and cache threshold, is in the key; its name is not: a draft and a custom spec with the same
#: concrete settings render the same frames and share one key.)
META_FIELDS: tuple[str, ...] = ("priority", "allow_degrade", "tags", "seed_strategy", "preset")

_WS_RE = re.compile(r"\s+")
#: Tag keys match this (Python ``re``), 1 to MAX_TAG_KEY_CHARS characters.
TAG_KEY_PATTERN = r"^[A-Za-z0-9_.:/-]+$"
_TAG_KEY_RE = re.compile(TAG_KEY_PATTERN)
_ALLOWED_CONTROL = frozenset("\t\n\r")


def normalize_prompt(text: str) -> str:
    """NFC, every run of whitespace to one space, trimmed. Renders and seeds use this form."""
    return _WS_RE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def has_control_chars(text: str) -> bool:
    """True when ``text`` holds a control character (Unicode ``Cc``) other than tab, newline and CR."""
    return any(unicodedata.category(c) == "Cc" and c not in _ALLOWED_CONTROL for c in text)


def _check_text(value: str, *, allow_empty: bool) -> str:
    if has_control_chars(value):
        raise PydanticCustomError(
            "no_control_chars", "must not contain NUL or other control characters (tab/newline are allowed)"
        )
    norm = normalize_prompt(value)
    if not norm and not allow_empty:
        raise PydanticCustomError("not_blank", "must not be empty or whitespace only")
    if len(norm) > MAX_PROMPT_CHARS:
        raise PydanticCustomError(
            "max_length", "must be at most {limit} characters after normalisation (got {n})",
            {"limit": MAX_PROMPT_CHARS, "n": len(norm)},
        )
    return norm


def guidance_rendered(scale: float) -> float:
    """The guidance scale an expert renders with; every scale <= 1 is 1.0 (no guidance).

    farm's rule, per expert: a scale > 1 runs classifier-free guidance (a conditional and an
    unconditional forward per step, ``uncond + scale * (cond - uncond)``); a scale <= 1 runs the
    conditional forward alone, so every scale in [0, 1] renders the same frames, and the
    canonical form (hence the job key) says 1.0 for all of them. (diffusers' ``WanPipeline``
    decides once, from ``guidance_scale``, for both experts; the two agree whenever both scales
    are > 1 or both are <= 1.)
    """
    return max(float(scale), GUIDANCE_OFF)


def _check_finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise PydanticCustomError("finite", "must be a finite number (not NaN or infinity)")
    return value


class RenderSpec(BaseModel):
    """Every parameter of one render. ``None`` means "the model profile's default"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: StrictStr
    negative_prompt: StrictStr | None = None
    seed: StrictInt
    model: StrictStr = DEFAULT_MODEL
    width: StrictInt | None = None
    height: StrictInt | None = None
    num_frames: StrictInt | None = None
    fps: StrictInt | None = None
    steps: StrictInt | None = None
    guidance_scale: StrictFloat | StrictInt | None = None
    guidance_scale_2: StrictFloat | StrictInt | None = None
    boundary_ratio: StrictFloat | StrictInt | None = None
    flow_shift: StrictFloat | StrictInt | None = None
    sampler: StrictStr | None = None
    preset: PresetName = "final"
    cache_threshold: StrictFloat | StrictInt | None = None
    output_format: OutputFormat = "mp4"
    priority: Priority = "batch"
    allow_degrade: StrictBool = False
    tags: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    seed_strategy: SeedStrategy = "explicit"

    # -- single-field rules ---------------------------------------------------------------------
    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return _check_text(v, allow_empty=False)

    @field_validator("negative_prompt")
    @classmethod
    def _negative(cls, v: str | None) -> str | None:
        return None if v is None else _check_text(v, allow_empty=True)

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if not 0 <= v <= MAX_SEED:
            raise PydanticCustomError("seed_range", "must be an integer in {range}", {"range": SEED_RANGE_TEXT})
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v not in PROFILES:
            raise PydanticCustomError(
                "known_model", "unknown model {model!r}; known: {known}",
                {"model": v, "known": ", ".join(sorted(PROFILES))},
            )
        return v

    @field_validator("width", "height")
    @classmethod
    def _side(cls, v: int | None) -> int | None:
        if v is None:
            return v
        if not MIN_SIDE_PX <= v <= MAX_SIDE_PX:
            raise PydanticCustomError(
                "size_bounds", "must be between {lo} and {hi} pixels", {"lo": MIN_SIDE_PX, "hi": MAX_SIDE_PX}
            )
        if v % SIDE_MULTIPLE_PX:
            raise PydanticCustomError(f"multiple_of_{SIDE_MULTIPLE_PX}", f"must be a multiple of {SIDE_MULTIPLE_PX}")
        return v

    @field_validator("num_frames")
    @classmethod
    def _frames(cls, v: int | None) -> int | None:
        if v is None:
            return v
        if v < 1 or (v - 1) % FRAMES_MULTIPLE:
            raise PydanticCustomError("frames_4k_plus_1", "must be of the form 4k+1 (1, 5, 9, ..., 81, ...)")
        return v

    @field_validator("fps")
    @classmethod
    def _fps(cls, v: int | None) -> int | None:
        if v is not None and not MIN_FPS <= v <= MAX_FPS:
            raise PydanticCustomError("fps_range", "must be in [{lo}, {hi}]", {"lo": MIN_FPS, "hi": MAX_FPS})
        return v

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int | None) -> int | None:
        if v is not None and not MIN_STEPS <= v <= MAX_STEPS:
            raise PydanticCustomError(
                "steps_range", "must be in [{lo}, {hi}]", {"lo": MIN_STEPS, "hi": MAX_STEPS}
            )
        return v

    @field_validator("guidance_scale", "guidance_scale_2")
    @classmethod
    def _guidance(cls, v: float | None) -> float | None:
        v = _check_finite(v)
        if v is not None and not 0.0 <= v <= MAX_GUIDANCE:
            raise PydanticCustomError("guidance_range", "must be in [0, {hi}]", {"hi": MAX_GUIDANCE})
        # + 0.0 turns -0.0 into 0.0: the same render must not get two job keys
        return None if v is None else float(v) + 0.0

    @field_validator("boundary_ratio")
    @classmethod
    def _boundary(cls, v: float | None) -> float | None:
        v = _check_finite(v)
        if v is not None and not 0.0 < v < 1.0:
            raise PydanticCustomError("boundary_range", "must be strictly between 0 and 1")
        return None if v is None else float(v)

    @field_validator("flow_shift")
    @classmethod
    def _shift(cls, v: float | None) -> float | None:
        v = _check_finite(v)
        if v is not None and not 0.0 < v <= MAX_FLOW_SHIFT:
            raise PydanticCustomError("flow_shift_range", "must be in (0, {hi}]", {"hi": MAX_FLOW_SHIFT})
        return None if v is None else float(v)

    @field_validator("cache_threshold")
    @classmethod
    def _cache_threshold(cls, v: float | None) -> float | None:
        v = _check_finite(v)
        if v is not None and not 0.0 < v <= MAX_CACHE_THRESHOLD:
            raise PydanticCustomError("cache_threshold_range", "must be in (0, {hi}]", {"hi": MAX_CACHE_THRESHOLD})
        return None if v is None else float(v)

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str | None) -> str | None:
        if v is not None and v not in SAMPLERS:
            raise PydanticCustomError(
                "known_sampler", "unknown sampler {s!r}; known: {known}", {"s": v, "known": ", ".join(SAMPLERS)}
            )
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_TAGS:
            raise PydanticCustomError("tags", "at most {n} tags", {"n": MAX_TAGS})
        for key, value in v.items():
            if not (0 < len(key) <= MAX_TAG_KEY_CHARS and _TAG_KEY_RE.match(key)):
                raise PydanticCustomError(
                    "tags", "tag keys are 1-{n} characters of A-Z a-z 0-9 _ . : / -", {"n": MAX_TAG_KEY_CHARS}
                )
            if len(value) > MAX_TAG_VALUE_CHARS or has_control_chars(value):
                raise PydanticCustomError(
                    "tags", "tag values are at most {n} characters, no control characters",
                    {"n": MAX_TAG_VALUE_CHARS},
                )
        return dict(sorted(v.items()))

    # -- derived --------------------------------------------------------------------------------
    @property
    def profile(self) -> ModelProfile:
        """The profile of the spec's model."""
        return PROFILES[self.model]

    def canonical(self) -> dict[str, Any]:
        """The canonical form: every field concrete (defaults from the profile), keys sorted."""
        p = self.profile
        # Each unset field takes the profile's default, independently of the others.
        g2 = self.guidance_scale_2 if self.guidance_scale_2 is not None else p.guidance_scale_2
        boundary = self.boundary_ratio if self.boundary_ratio is not None else p.boundary_ratio
        out: dict[str, Any] = {
            "prompt": self.prompt,
            "negative_prompt": p.negative_prompt if self.negative_prompt is None else self.negative_prompt,
            "seed": self.seed,
            "model": self.model,
            "width": p.width if self.width is None else self.width,
            "height": p.height if self.height is None else self.height,
            "num_frames": p.num_frames if self.num_frames is None else self.num_frames,
            "fps": p.fps if self.fps is None else self.fps,
            "steps": self._steps_rendered(p),
            "guidance_scale": guidance_rendered(p.guidance_scale if self.guidance_scale is None
                                                else self.guidance_scale),
            "guidance_scale_2": guidance_rendered(g2) if p.two_expert and g2 is not None else None,
            "boundary_ratio": float(boundary) if p.two_expert and boundary is not None else None,
            "flow_shift": float(p.flow_shift if self.flow_shift is None else self.flow_shift),
            "sampler": p.sampler if self.sampler is None else self.sampler,
            "preset": self.preset,
            "cache_threshold": self._cache_rendered(p),
            "output_format": self.output_format,
            "priority": self.priority,
            "allow_degrade": self.allow_degrade,
            "tags": dict(self.tags),
            "seed_strategy": self.seed_strategy,
        }
        return dict(sorted(out.items()))

    def _steps_rendered(self, p: ModelProfile) -> int:
        """The steps: the spec's, else the preset's (``draft``: the profile's draft steps)."""
        if self.steps is not None:
            return self.steps
        return p.draft_steps if self.preset == Preset.DRAFT.value else p.steps

    def _cache_rendered(self, p: ModelProfile) -> float | None:
        """Step caching's threshold: none for ``final``, the profile's for ``draft``, the spec's for ``custom``."""
        if self.preset == Preset.DRAFT.value:
            return float(p.draft_cache_threshold)
        return self.cache_threshold if self.preset == Preset.CUSTOM.value else None

    def render_params(self) -> dict[str, Any]:
        """The canonical fields that change the output (what the job key hashes)."""
        canon = self.canonical()
        return {k: canon[k] for k in sorted(RENDER_FIELDS)}

    @property
    def job_key(self) -> str:
        """The job key of the spec (see :func:`job_key_from_canonical`)."""
        return job_key_from_canonical(self.canonical())

    def with_seed(self, seed: int, strategy: SeedStrategy) -> RenderSpec:
        """A copy with another seed (checked)."""
        data = self.model_dump()
        data.update(seed=seed, seed_strategy=strategy)
        return parse_spec(data)


def compatibility_key(canon: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """What K jobs must share to be rendered together.

    ``((field, value), ...)`` over :data:`COMPAT_FIELDS`. Jobs with equal keys can be
    phase-batched.
    """
    return tuple((name, canon.get(name)) for name in COMPAT_FIELDS)


def compat_digest(canon: Mapping[str, Any]) -> str:
    """:func:`compatibility_key` as a short hex digest.

    Stored with each job, indexed: workers find compatible queued jobs with it.
    """
    payload = canonical_json(dict(compatibility_key(canon)))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def canonical_json(data: Mapping[str, Any]) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 text; floats in shortest round-trip form."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def job_key_from_canonical(canon: Mapping[str, Any]) -> str:
    """The job key of a spec's canonical form (:meth:`RenderSpec.canonical`)."""
    return job_key_of({k: canon[k] for k in sorted(RENDER_FIELDS)})


def job_key_of(render_params: Mapping[str, Any], *, version: str = SPEC_VERSION) -> str:
    """sha256 hex of the spec version and the canonical JSON of ``render_params``."""
    payload = version + "\n" + canonical_json(render_params)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def recorded_spec_version(canon: Mapping[str, Any], job_key: str) -> str | None:
    """The spec version under which a recorded canonical form gives its recorded ``job_key``.

    ``None`` when none of :data:`SPEC_VERSIONS` does (the record was altered, or a canonical rule
    changed without a new version).
    """
    for version in SPEC_VERSIONS:
        names = RENDER_FIELDS if version == SPEC_VERSION else RENDER_FIELDS_V1
        if all(k in canon for k in names) and job_key_of({k: canon[k] for k in sorted(names)},
                                                         version=version) == job_key:
            return version
    return None


def _problems_from_pydantic(exc: PydanticValidationError, location: str) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = [str(x) for x in err["loc"]]
        field = loc[0] if loc else "spec"
        kind = err["type"]
        if kind == "extra_forbidden":
            problems.append(Problem(field, "unknown_field", "is not a render spec field", location))
            continue
        if kind == "missing":
            problems.append(Problem(field, "required", "is required", location))
            continue
        if kind == "literal_error":
            kind = "one_of"
        elif kind.endswith("_type") or kind in ("int_from_float", "bool_parsing", "int_parsing"):
            kind = "type"
        problems.append(Problem(field, kind, err["msg"], location))
    return problems


def _check_against_profile(spec: RenderSpec, location: str) -> list[Problem]:
    """Rules that depend on the model: two-expert-only fields, the model's size multiple, frames."""
    p = spec.profile
    problems = []
    if not p.two_expert:
        for name in ("guidance_scale_2", "boundary_ratio"):
            if getattr(spec, name) is not None:
                problems.append(
                    Problem(name, "two_expert_only", f"only two-expert models take it; {p.name} is dense", location)
                )
    for name in ("width", "height"):
        value = getattr(spec, name)
        if value is not None and value % p.size_multiple:
            problems.append(
                Problem(name, f"multiple_of_{p.size_multiple}", f"must be a multiple of {p.size_multiple} "
                        f"for {p.name}", location)
            )
    if spec.preset == Preset.CUSTOM.value and spec.cache_threshold is None:
        problems.append(Problem("cache_threshold", "required_by_preset", "preset custom needs a cache_threshold",
                                location))
    if spec.preset != Preset.CUSTOM.value and spec.cache_threshold is not None:
        problems.append(Problem("cache_threshold", "set_by_preset", f"preset {spec.preset} sets it; use preset "
                                "custom to choose one", location))
    if spec.num_frames is not None and spec.num_frames > p.max_frames:
        problems.append(
            Problem("num_frames", "frames_bounds", f"must be at most {p.max_frames} for {p.name}", location)
        )
    return problems


def parse_spec(data: Mapping[str, Any] | RenderSpec, *, location: str = "") -> RenderSpec:
    """Validate ``data`` into a :class:`RenderSpec`; raise :class:`SpecError` naming every bad field."""
    if isinstance(data, RenderSpec):
        data = data.model_dump()
    if not isinstance(data, Mapping):
        raise SpecError.one("spec", "type", f"must be a mapping of fields, got {type(data).__name__}", location)
    try:
        spec = RenderSpec.model_validate(data)
    except PydanticValidationError as exc:
        raise SpecError(_problems_from_pydantic(exc, location)) from None
    problems = _check_against_profile(spec, location)
    if problems:
        raise SpecError(problems)
    return spec


def spec_from_canonical(canon: Mapping[str, Any]) -> RenderSpec:
    """Rebuild a spec from its canonical form (as stored in the ledger).

    A row recorded under ``farm.spec/1`` may hold a seed above 2^32-1: its frames were drawn by
    the generator from the seed's low 32 bits, so it comes back as ``seed mod 2^32`` (the same
    frames; a new job key under this spec version).
    """
    data = dict(canon)
    if data.get("preset", Preset.FINAL.value) != Preset.CUSTOM.value:
        data.pop("cache_threshold", None)  # derived from the preset (and the profile)
    seed = data.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and seed > MAX_SEED:
        data["seed"] = seed & MAX_SEED
    if not PROFILES.get(str(data.get("model")), PROFILES[DEFAULT_MODEL]).two_expert:
        data.pop("guidance_scale_2", None)
        data.pop("boundary_ratio", None)
    return parse_spec(data)
