"""Turning a producer's request into checked render specs (seed chosen, strategy recorded).

One door for every producer: ``farm render`` and ``farm submit`` (through :func:`build_spec`), the
Python client and the HTTP API (through :func:`build_specs`). Every rule is checked here, before
anything is written or enqueued; a broken rule raises :class:`~farm.errors.InvalidInput` (or its
:class:`~farm.errors.SpecError`) naming the field and the rule.

Seed sources (at most one): an explicit ``seed`` (strategy ``explicit``), ``seed_from_prompt``
with an optional ``salt`` (``prompt``), a ``sweep=(base, radius)`` giving one job per seed of
``base - radius .. base + radius`` (``sweep``), or none: a random seed, recorded (``random``).

Torch-free.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from farm.errors import InvalidInput, Problem, SpecError
from farm.seeds import random_seed, seed_from_prompt, sweep
from farm.spec import RenderSpec, SeedStrategy, parse_spec

#: CLI option name (as click passes it) -> render spec field.
SPEC_OPTIONS: dict[str, str] = {
    "negative_prompt": "negative_prompt",
    "width": "width",
    "height": "height",
    "frames": "num_frames",
    "fps": "fps",
    "steps": "steps",
    "guidance": "guidance_scale",
    "guidance_2": "guidance_scale_2",
    "boundary_ratio": "boundary_ratio",
    "flow_shift": "flow_shift",
    "sampler": "sampler",
    "preset": "preset",
    "cache_threshold": "cache_threshold",
    "output_format": "output_format",
}
#: Spec fields a producer may not pass through ``**spec_fields``: the client sets them.
RESERVED_FIELDS: tuple[str, ...] = ("prompt", "seed", "seed_strategy", "model", "priority")


def parse_tags(tags: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` (the CLI's repeatable ``--tag``) as a mapping."""
    out: dict[str, str] = {}
    for item in tags:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput.one("tags", "tags", f"--tag takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _sweep_seeds(value: object) -> list[int]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str | bytes)
        or len(value) != 2
    ):
        raise InvalidInput.one("sweep", "base_radius", f"must be a pair (base, radius), got {value!r}")
    base, radius = value
    try:
        seeds = sweep(base, radius)
    except InvalidInput as exc:
        raise InvalidInput([Problem(f"sweep.{p.field}", p.rule, p.message) for p in exc.problems]) from None
    return seeds


def choose_seeds(
    prompt: object,
    *,
    seed: int | None = None,
    seed_from_prompt_flag: bool = False,
    salt: str = "",
    sweep_of: object = None,
) -> tuple[list[int], SeedStrategy]:
    """The seeds of a request and the strategy to record.

    Checks that at most one source is given and that ``salt`` only comes with
    ``seed_from_prompt``.
    """
    given = [name for name, on in (("seed", seed is not None), ("seed_from_prompt", seed_from_prompt_flag),
                                   ("sweep", sweep_of is not None)) if on]
    if len(given) > 1:
        raise InvalidInput.one(
            given[1], "one_seed_source", f"give only one of seed, seed_from_prompt, sweep (got {', '.join(given)})"
        )
    if not isinstance(salt, str):
        raise InvalidInput.one("salt", "type", f"must be text, got {type(salt).__name__}")
    if salt and not seed_from_prompt_flag:
        raise InvalidInput.one("salt", "needs_seed_from_prompt", "is only used with seed_from_prompt")
    if seed is not None:
        return [seed], "explicit"
    if sweep_of is not None:
        return _sweep_seeds(sweep_of), "sweep"
    if seed_from_prompt_flag:
        if not isinstance(prompt, str):
            raise InvalidInput.one("prompt", "type", f"must be text, got {type(prompt).__name__}")
        return [seed_from_prompt(prompt, salt)], "prompt"
    return [random_seed()], "random"


def build_specs(
    prompt: object,
    *,
    seed: int | None = None,
    seed_from_prompt_flag: bool = False,
    salt: str = "",
    sweep_of: object = None,
    model: str | None = None,
    priority: str = "interactive",
    fields: Mapping[str, Any] | None = None,
) -> list[RenderSpec]:
    """Checked specs for one request: one per seed (a sweep gives several).

    ``fields`` are other render spec fields (``width``, ``steps``, ``tags``, ...); ``None``
    values are left unset.

    Every problem is reported at once (one :class:`InvalidInput`): a reserved or unknown field
    does not hide the rules the other fields break.
    """
    extra = dict(fields or {})
    reserved = [k for k in RESERVED_FIELDS if k in extra]
    unknown = [k for k in extra if k not in RenderSpec.model_fields and k not in reserved]
    problems = [Problem(k, "set_by_client", "is given by its own argument or chosen by the client") for k in reserved]
    data: dict[str, Any] = {"prompt": prompt, "priority": priority}
    if model is not None:
        data["model"] = model
    data.update({k: v for k, v in extra.items() if v is not None and k not in reserved and k not in unknown})
    try:
        seeds, strategy = choose_seeds(
            prompt, seed=seed, seed_from_prompt_flag=seed_from_prompt_flag, salt=salt, sweep_of=sweep_of
        )
    except InvalidInput as exc:  # report the spec's own problems too, all at once
        problems.extend(exc.problems)
        seeds, strategy = [], "explicit"
    first: RenderSpec | None = None
    try:
        first = parse_spec({**data, "seed": seeds[0] if seeds else 0, "seed_strategy": strategy})
    except InvalidInput as spec_exc:
        problems.extend(p for p in spec_exc.problems if seeds or p.field != "seed")
    problems.extend(Problem(k, "unknown_field", f"is not a render spec field{_hint(k)}") for k in unknown)
    if problems or first is None:
        # only the spec's own rules broken (unknown fields included): a SpecError, as from parse_spec
        spec_only = not reserved and bool(seeds)
        raise (SpecError if spec_only else InvalidInput)(problems)
    # The other seeds were checked by farm.seeds.sweep: copies differ in the seed only.
    return [first, *(first.model_copy(update={"seed": s}) for s in seeds[1:])]


def _hint(name: str) -> str:
    """`` (did you mean 'steps'?)`` for a misspelt spec field, else empty."""
    close = difflib.get_close_matches(name, [f for f in RenderSpec.model_fields if f not in RESERVED_FIELDS], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build_spec(
    prompt: str, *, seed: int | None, seed_from_prompt_flag: bool, salt: str, model: str | None,
    priority: str, allow_degrade: bool, tags: tuple[str, ...], values: dict[str, Any],
) -> RenderSpec:
    """The checked spec of one render from the CLI's options (``values`` keyed by :data:`SPEC_OPTIONS` names).

    The seed resolved and its strategy recorded.
    """
    fields: dict[str, Any] = {SPEC_OPTIONS[k]: v for k, v in values.items() if v is not None}
    fields.update(allow_degrade=allow_degrade, tags=parse_tags(tags))
    return build_specs(
        prompt, seed=seed, seed_from_prompt_flag=seed_from_prompt_flag, salt=salt, model=model,
        priority=priority, fields=fields,
    )[0]
