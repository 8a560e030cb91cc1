"""Expansion: a :class:`~farm.manifest.model.Manifest` into validated render jobs.

Two passes. The first checks the structure (top-level keys, defaults, variants, the seed pool,
every item's prompts, seed selection and fields), collects every problem it finds, and counts the
jobs each item will make, so an oversized manifest is refused before anything is built. The
second builds the jobs: items in file order; within an item, prompts in order, then seeds in
order, then variant combinations (axes sorted by field name, values in the order listed). Each
prompt x variant combination is validated once with :func:`farm.spec.parse_spec`; its other
seeds are copies with only the (already checked) seed changed, and every job key is hashed from
the same canonical render parameters :attr:`RenderSpec.job_key` uses.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from farm.errors import ManifestError, Problem, SpecError
from farm.manifest.model import (
    DEFAULT_MAX_PROBLEMS,
    MANIFEST_VERSION,
    MAX_JOBS_PER_MANIFEST,
    MAX_NAME_CHARS,
    TOP_LEVEL_KEYS,
    ContentPath,
    Issue,
    Manifest,
    short_repr,
)
from farm.manifest.selection import SeedSelection, SeedSelectionReader
from farm.seeds import SeedPool, is_valid_seed, random_seed
from farm.spec import (
    META_FIELDS,
    RENDER_FIELDS,
    SEED_RANGE_TEXT,
    RenderSpec,
    canonical_json,
    job_key_of,
    parse_spec,
)

#: Every field a spec takes (what ``defaults`` and items may set, besides ``seed_strategy``).
SPEC_FIELDS: tuple[str, ...] = tuple(RenderSpec.model_fields)
#: Keys that vary in ``variants``: the render fields other than prompt and seed, and ``size``.
VARIANT_KEYS: tuple[str, ...] = (*(f for f in RENDER_FIELDS if f not in ("prompt", "seed")), "size")
#: Item keys that are not spec fields.
ITEM_STRUCTURE_KEYS: tuple[str, ...] = ("prompt", "prompts", "seed", "seeds", "variants")

_RENDER_KEYS = tuple(sorted(RENDER_FIELDS))
_VARIANT_ID_SKIP = frozenset({"prompt", "seed"})
_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*[xX]\s*([0-9]+)\s*$")


def parse_size(value: Any) -> tuple[int, int] | None:
    """``"832x480"`` -> ``(832, 480)``; ``None`` when it is not ``WIDTHxHEIGHT``."""
    if not isinstance(value, str):
        return None
    m = _SIZE_RE.match(value)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _hint(key: object, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _field_problems(values: Mapping[str, Any]) -> list[Problem]:
    """The single-field rules ``values`` break (no model-dependent rules): probes a spec."""
    probe = {"prompt": "probe", "seed": 0, **values}
    try:
        RenderSpec.model_validate(probe)
    except PydanticValidationError:
        try:
            parse_spec(probe)
        except SpecError as exc:
            return exc.problems
    return []


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpandedJob:
    """One concrete job: its validated spec (seed and seed strategy resolved) and its job key."""

    spec: RenderSpec
    job_key: str
    #: The manifest item it came from, 1-based.
    item: int


@dataclass(frozen=True)
class BatchStats:
    """What an expansion holds: items, jobs, and the distinct prompts, seeds, variants, models and strategies."""

    items: int
    jobs: int
    #: Distinct normalised prompts.
    prompts: int
    #: Distinct seed values.
    seeds: int
    #: Distinct parameter sets other than prompt and seed (model, size, guidance, ...).
    variants: int
    models: dict[str, int]
    seed_strategies: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        """The counts as a JSON-ready dict."""
        return {
            "items": self.items,
            "jobs": self.jobs,
            "prompts": self.prompts,
            "seeds": self.seeds,
            "variants": self.variants,
            "models": dict(self.models),
            "seed_strategies": dict(self.seed_strategies),
        }


@dataclass
class ExpandedBatch:
    """The jobs a manifest expands to, its digest, and the problems found (empty when valid)."""

    source: str
    name: str | None
    digest: str
    jobs: list[ExpandedJob]
    problems: list[Problem]
    #: True when more problems existed than were collected.
    problems_truncated: bool
    stats: BatchStats

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def specs(self) -> list[RenderSpec]:
        """The jobs' render specs, in expansion order."""
        return [j.spec for j in self.jobs]

    @property
    def job_keys(self) -> list[str]:
        """The jobs' keys, in expansion order."""
        return [j.job_key for j in self.jobs]

    def error(self) -> ManifestError:
        """The :class:`ManifestError` carrying every problem found."""
        return ManifestError(self.problems)

    def raise_for_problems(self) -> None:
        """Raise :meth:`error` when any problem was found."""
        if self.problems:
            raise self.error()

    def summary(self) -> dict[str, Any]:
        """What ``farm validate`` reports: source, name, digest, validity, counts and problems."""
        return {
            "source": self.source,
            "name": self.name,
            "digest": self.digest,
            "valid": self.ok,
            "counts": self.stats.as_dict(),
            "problems": [p.as_dict() for p in self.problems],
            "problems_truncated": self.problems_truncated,
        }


# -- parsed pieces -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One variant axis: the spec fields it sets and its values (each a field -> value mapping)."""

    key: str
    fields: frozenset[str]
    values: tuple[dict[str, Any], ...]


@dataclass
class _Plan:
    index: int
    prompts: list[str]
    from_list: bool
    selection: SeedSelection
    base: dict[str, Any]
    combos: list[dict[str, Any]]
    own_keys: frozenset[str]
    axis_keys: dict[str, str] = field(default_factory=dict)  # spec field -> item variant key

    @property
    def job_count(self) -> int:
        return len(self.prompts) * self.selection.per_prompt * len(self.combos)


class _Stop(Exception):
    """Enough problems collected."""


# -- the expander ------------------------------------------------------------------------------


class _Expander:
    def __init__(self, manifest: Manifest, max_problems: int, draw: Callable[[], int]) -> None:
        self.m = manifest
        self.max_problems = max(1, max_problems)
        self.draw = draw
        self.issues: list[Issue] = []
        self.truncated = False
        self.jobs: list[ExpandedJob] = []
        self.first_item_of: dict[str, int] = {}
        self.duplicates: dict[tuple[int, int], list[Any]] = {}
        self.variant_ids: set[str] = set()
        self.seeds = SeedSelectionReader(self.add)

    def add(self, path: ContentPath, field_: str, rule: str, message: str, line: int | None = None) -> None:
        if len(self.issues) >= self.max_problems:
            self.truncated = True
            raise _Stop
        self.issues.append(Issue(path, field_, rule, message, line))

    # -- pass 1: structure ----------------------------------------------------------------------
    def top_level(self) -> tuple[dict[str, Any] | None, dict[str, Axis] | None, SeedPool | None, bool]:
        c = self.m.content
        for key in c:
            if key not in TOP_LEVEL_KEYS:
                self.add(
                    (str(key),),
                    str(key),
                    "unknown_field",
                    f"is not a top-level key ({', '.join(TOP_LEVEL_KEYS)}){_hint(key, TOP_LEVEL_KEYS)}",
                )
        if "version" in c:
            v = c["version"]
            if type(v) is not int or v != MANIFEST_VERSION:
                self.add(
                    ("version",),
                    "version",
                    "supported_version",
                    f"must be {MANIFEST_VERSION}, got {short_repr(v)}",
                )
        name = c.get("name")
        if name is not None and not (
            isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and name.isprintable()
        ):
            self.add(
                ("name",),
                "name",
                "name",
                f"must be text of 1-{MAX_NAME_CHARS} printable characters, got {short_repr(name)}",
            )
        defaults = self.fields(c.get("defaults"), ("defaults",), "defaults.", is_item=False)
        if defaults is not None:
            for p in _field_problems(defaults):
                where = p.field if p.field in (c.get("defaults") or {}) else "size"
                self.add(("defaults", where), f"defaults.{p.field}", p.rule, p.message)
                defaults = None
        axes = self.axes(c.get("variants"), ("variants",), "variants.", probe=True)
        pool: SeedPool | None = None
        pool_ok = True
        raw_pool = c.get("seed_pool")
        if raw_pool is not None:
            pool_ok = False
            if not isinstance(raw_pool, list) or not raw_pool:
                self.add(("seed_pool",), "seed_pool", "type", "must be a non-empty list of seeds")
            else:
                bad = [j for j, s in enumerate(raw_pool) if not is_valid_seed(s)]
                for j in bad:
                    self.add(
                        ("seed_pool", j),
                        "seed_pool",
                        "seed_range",
                        f"seed {j + 1} must be an integer in {SEED_RANGE_TEXT}, got {short_repr(raw_pool[j])}",
                    )
                if not bad:
                    pool, pool_ok = SeedPool(raw_pool), True
        return defaults, axes, pool, pool_ok

    def fields(self, raw: Any, path: ContentPath, prefix: str, *, is_item: bool) -> dict[str, Any] | None:
        """Spec fields of ``defaults`` or an item (``size`` resolved); None when any is wrong."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.add(path, prefix.rstrip("."), "type", "must be a mapping of spec fields")
            return None
        out: dict[str, Any] = {}
        before = len(self.issues)
        for key, value in raw.items():
            here = (*path, str(key))
            name = f"{prefix}{key}"
            if is_item and key in ITEM_STRUCTURE_KEYS:
                continue
            if key in SPEC_FIELDS and key not in ("prompt", "seed", "seed_strategy"):
                out[key] = value
            elif key == "size":
                size = parse_size(value)
                if size is None:
                    self.add(
                        here,
                        name,
                        "size_format",
                        f"must be WIDTHxHEIGHT like '832x480', got {short_repr(value)}",
                    )
                elif "width" in raw or "height" in raw:
                    self.add(here, name, "size_conflict", "give size or width/height, not both")
                else:
                    out["width"], out["height"] = size
            elif key == "seed_strategy":
                self.add(
                    here, name, "set_by_expansion", "is recorded by the expansion from the seed selection"
                )
            elif key in ITEM_STRUCTURE_KEYS:
                why = {
                    "prompt": "each item gives its own prompt:",
                    "prompts": "each item gives its own prompts:",
                    "seed": "each item chooses its own seeds (seed: or seeds:)",
                    "seeds": "each item chooses its own seeds (seed: or seeds:)",
                    "variants": "top-level variants: apply to every item",
                }[key]
                self.add(here, name, "not_a_default", f"cannot be a default: {why}")
            else:
                known = (*SPEC_FIELDS, "size", *(ITEM_STRUCTURE_KEYS if is_item else ()))
                self.add(here, name, "unknown_field", f"is not a spec field{_hint(key, known)}")
        return out if len(self.issues) == before else None

    def axes(self, raw: Any, path: ContentPath, prefix: str, *, probe: bool) -> dict[str, Axis] | None:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.add(path, prefix.rstrip("."), "type", "must be a mapping of field: [values]")
            return None
        out: dict[str, Axis] = {}
        ok = True
        for key, values in raw.items():
            here = (*path, str(key))
            name = f"{prefix}{key}"
            axis = self.axis(str(key), values, here, name, probe=probe) if key in VARIANT_KEYS else None
            if axis is None:
                ok = False
                if key in VARIANT_KEYS:
                    continue
                if key in ("prompt", "prompts", "seed", "seeds"):
                    self.add(here, name, "not_a_variant", "list prompts with prompts: and seeds with seeds:")
                elif key in META_FIELDS:
                    self.add(here, name, "not_a_variant", "does not change the render, so it cannot vary")
                else:
                    self.add(
                        here,
                        name,
                        "unknown_field",
                        f"is not a spec field that can vary{_hint(key, VARIANT_KEYS)}",
                    )
                continue
            for other in out.values():
                if other.fields & axis.fields:
                    ok = False
                    self.add(
                        here,
                        name,
                        "variant_conflict",
                        f"{key} and {other.key} both vary {', '.join(sorted(other.fields & axis.fields))}",
                    )
            out[axis.key] = axis
        return out if ok else None

    def axis(self, key: str, values: Any, here: ContentPath, name: str, *, probe: bool) -> Axis | None:
        if not isinstance(values, list):
            self.add(
                here,
                name,
                "variant_list",
                f"must be a list of values, e.g. {key}: [a, b], got {short_repr(values)}",
            )
            return None
        if not values:
            self.add(here, name, "not_empty", "must list at least one value")
            return None
        parsed: list[dict[str, Any]] = []
        ok = True
        for j, value in enumerate(values):
            if isinstance(value, dict | list):
                self.add((*here, j), name, "variant_scalar", f"value {j + 1} must be a single value")
                ok = False
                continue
            if key == "size":
                size = parse_size(value)
                if size is None:
                    self.add(
                        (*here, j),
                        name,
                        "size_format",
                        f"must be WIDTHxHEIGHT like '832x480', got {short_repr(value)}",
                    )
                    ok = False
                    continue
                entry: dict[str, Any] = {"width": size[0], "height": size[1]}
            else:
                entry = {key: value}
            if entry in parsed:
                self.add(
                    (*here, j),
                    name,
                    "duplicate_variant",
                    f"lists {short_repr(value)} twice (the jobs would repeat)",
                )
                ok = False
                continue
            if probe:
                for p in _field_problems(entry):
                    self.add((*here, j), name, p.rule, f"{short_repr(value)}: {p.message}")
                    ok = False
            parsed.append(entry)
        fields = frozenset({"width", "height"} if key == "size" else {key})
        return Axis(key, fields, tuple(parsed)) if ok else None

    def plan(
        self, index: int, item: Any, defaults: dict[str, Any], top_axes: dict[str, Axis], has_pool: bool
    ) -> _Plan | None:
        path: ContentPath = ("items", index)
        if not isinstance(item, dict):
            self.add(
                path,
                "item",
                "type",
                f"must be a mapping (prompt:, seed:, spec fields), got {short_repr(item)}",
            )
            return None
        before = len(self.issues)
        prompts, from_list = self.item_prompts(item, path)
        selection = self.seeds.selection(item, path, has_pool)
        own = self.fields(item, path, "", is_item=True)
        item_axes = self.axes(item.get("variants"), (*path, "variants"), "variants.", probe=False)
        if own is None or item_axes is None or selection is None or len(self.issues) > before:
            return None
        axes, axis_keys = self.item_axes(path, own, item_axes, top_axes)
        if len(self.issues) > before:
            return None
        base = dict(defaults)
        if isinstance(defaults.get("tags"), dict) and isinstance(own.get("tags"), dict):
            own = {**own, "tags": {**defaults["tags"], **own["tags"]}}
        base.update(own)
        combos = self.combos(path, axes)
        if combos is None:
            return None
        own_keys = frozenset(str(k) for k in item)
        return _Plan(index, prompts, from_list, selection, base, combos, own_keys, axis_keys)

    def item_prompts(self, item: dict[Any, Any], path: ContentPath) -> tuple[list[str], bool]:
        """The item's prompts (``prompt:`` or ``prompts:``), and whether they come from a list."""
        prompts: list[str] = []
        from_list = False
        if "prompt" in item and "prompts" in item:
            self.add((*path, "prompts"), "prompts", "one_prompt_source", "give prompt or prompts, not both")
        elif "prompt" in item:
            if isinstance(item["prompt"], str):
                prompts = [item["prompt"]]
            else:
                self.add(
                    (*path, "prompt"), "prompt", "type", f"must be text, got {short_repr(item['prompt'])}"
                )
        elif "prompts" in item:
            from_list = True
            raw = item["prompts"]
            if not isinstance(raw, list) or not raw:
                self.add((*path, "prompts"), "prompts", "type", "must be a non-empty list of prompts")
            else:
                for j, text in enumerate(raw):
                    if isinstance(text, str):
                        prompts.append(text)
                    else:
                        self.add(
                            (*path, "prompts", j),
                            "prompts",
                            "type",
                            f"prompt {j + 1} must be text, got {short_repr(text)}",
                        )
        else:
            self.add(path, "prompt", "required", "every item needs prompt: or prompts: [...]")
        return prompts, from_list

    def item_axes(
        self, path: ContentPath, own: dict[str, Any], item_axes: dict[str, Axis], top_axes: dict[str, Axis]
    ) -> tuple[list[Axis], dict[str, str]]:
        """The item's axes and the axis key of each field they vary.

        Its own axes, then the top-level ones it does not cover. A field set both directly and by
        an axis is an issue.
        """
        direct = frozenset(own) - {"tags"}
        axis_keys: dict[str, str] = {}
        for axis in item_axes.values():
            for f in axis.fields:
                axis_keys[f] = axis.key
            if axis.fields & direct:
                self.add(
                    (*path, "variants", axis.key),
                    f"variants.{axis.key}",
                    "variant_conflict",
                    f"sets {', '.join(sorted(axis.fields & direct))} both directly and as a variant",
                )
        covered = direct | frozenset(axis_keys)
        axes = list(item_axes.values())
        for axis in top_axes.values():
            if axis.fields <= covered:
                continue  # the item sets these fields itself
            if axis.fields & covered:
                self.add(
                    path,
                    f"variants.{axis.key}",
                    "variant_conflict",
                    f"the item sets {', '.join(sorted(axis.fields & covered))} but not all of the top-level "
                    f"variant {axis.key} ({', '.join(sorted(axis.fields))})",
                )
            axes.append(axis)
        return axes, axis_keys

    def combos(self, path: ContentPath, axes: list[Axis]) -> list[dict[str, Any]] | None:
        """Every combination of the axes' values (axes in key order); None past the job limit."""
        combos: list[dict[str, Any]] = [{}]
        for axis in sorted(axes, key=lambda a: a.key):
            combos = [{**c, **v} for c in combos for v in axis.values]
            if len(combos) > MAX_JOBS_PER_MANIFEST:
                self.add(
                    (*path, "variants"),
                    "variants",
                    "max_jobs",
                    f"the variants alone make more than {MAX_JOBS_PER_MANIFEST} combinations",
                )
                return None
        return combos

    # -- pass 2: jobs ---------------------------------------------------------------------------
    def spec_problem(self, plan: _Plan, j: int, p: Problem, seen: set[tuple[str, str, str]]) -> None:
        path: ContentPath = ("items", plan.index)
        name, message = p.field, p.message
        if name == "prompt" and plan.from_list:
            name, message, path = "prompts", f"prompt {j + 1}: {message}", (*path, "prompts", j)
        elif name in plan.own_keys:
            path = (*path, name)
        elif name in ("width", "height") and "size" in plan.own_keys:
            path = (*path, "size")
        elif name in plan.axis_keys:
            path = (*path, "variants", plan.axis_keys[name])
        if (name, p.rule, message) not in seen:
            seen.add((name, p.rule, message))
            self.add(path, name, p.rule, message)

    def build(self, plan: _Plan, pool: SeedPool | None) -> None:
        item_no = plan.index + 1
        strategy = plan.selection.strategy
        seen: set[tuple[str, str, str]] = set()
        for j, prompt in enumerate(plan.prompts):
            seeds = plan.selection.resolve(prompt, pool, self.draw)
            per_combo: list[list[ExpandedJob]] = []
            for combo in plan.combos:
                data = {**plan.base, **combo, "prompt": prompt, "seed": seeds[0], "seed_strategy": strategy}
                try:
                    spec = parse_spec(data)
                except SpecError as exc:
                    for p in exc.problems:
                        self.spec_problem(plan, j, p, seen)
                    continue
                canon = spec.canonical()
                params = {k: canon[k] for k in _RENDER_KEYS}
                self.variant_ids.add(
                    canonical_json({k: v for k, v in params.items() if k not in _VARIANT_ID_SKIP})
                )
                jobs = []
                for n, seed in enumerate(seeds):
                    params["seed"] = seed
                    copy = spec if n == 0 else spec.model_copy(update={"seed": seed})
                    jobs.append(ExpandedJob(copy, job_key_of(params), item_no))
                per_combo.append(jobs)
            for n in range(len(seeds)):
                for jobs in per_combo:
                    job = jobs[n]
                    first = self.first_item_of.get(job.job_key)
                    if first is None:
                        self.first_item_of[job.job_key] = item_no
                        self.jobs.append(job)
                    else:
                        self.duplicates.setdefault((item_no, first), []).append(job)

    def report_duplicates(self) -> None:
        for (item_no, first), jobs in sorted(self.duplicates.items()):
            example = jobs[0].spec
            of = "other jobs of this item" if first == item_no else f"jobs of item {first}"
            self.add(
                ("items", item_no - 1),
                "job",
                "duplicate_job",
                f"{len(jobs)} job(s) repeat {of} (same render parameters, e.g. seed {example.seed}, "
                f"prompt {example.prompt!r:.60})",
            )

    def run(self) -> None:
        defaults, top_axes, pool, pool_ok = self.top_level()
        items = self.m.content.get("items")
        if "items" not in self.m.content:
            self.add(("items",), "items", "required", "the manifest has no items:")
        elif not isinstance(items, list):
            self.add(("items",), "items", "type", "must be a list of items")
        elif not items:
            self.add(("items",), "items", "not_empty", "the manifest has no items")
        if not isinstance(items, list):
            return
        plans = []
        total = 0
        for index, item in enumerate(items):
            if index in self.m.skip_items:
                continue
            plan = self.plan(index, item, defaults or {}, top_axes or {}, "seed_pool" in self.m.content)
            if plan is not None:
                plans.append(plan)
                total += plan.job_count
        if total > MAX_JOBS_PER_MANIFEST:
            self.add(
                ("items",),
                "items",
                "max_jobs",
                f"the manifest expands to {total:,} jobs; the limit is "
                f"{MAX_JOBS_PER_MANIFEST:,} per manifest (split it into several batches)",
            )
            return
        if defaults is None or top_axes is None or not pool_ok:
            return  # every item would repeat those problems
        for plan in plans:
            self.build(plan, pool)
        self.report_duplicates()


def _stats(items: int, jobs: list[ExpandedJob], variants: int) -> BatchStats:
    specs = [j.spec for j in jobs]
    return BatchStats(
        items=items,
        jobs=len(jobs),
        prompts=len({s.prompt for s in specs}),
        seeds=len({s.seed for s in specs}),
        variants=variants,
        models=dict(sorted(Counter(s.model for s in specs).items())),
        seed_strategies=dict(sorted(Counter(s.seed_strategy for s in specs).items())),
    )


def _issue_order(issue: Issue) -> int:
    """Top-level problems first, then items in file order (stable within each)."""
    path = issue.path
    return path[1] if len(path) > 1 and path[0] == "items" and isinstance(path[1], int) else -1


def expand(
    manifest: Manifest,
    *,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
    draw_seed: Callable[[], int] = random_seed,
    raise_on_problems: bool = True,
) -> ExpandedBatch:
    """Expand and validate every job of ``manifest``.

    Collects up to ``max_problems`` problems across all items (file, item, line, field each).
    By default raises :class:`ManifestError` with them when there are any, so a producer can never
    enqueue a partial batch by accident; with ``raise_on_problems=False`` returns the batch with
    ``problems`` filled and only the jobs that were valid (for ``farm validate``).
    ``draw_seed`` draws the seeds of ``{random: N}`` selections (default :func:`farm.seeds.random_seed`).
    """
    ex = _Expander(manifest, max_problems, draw_seed)
    try:
        for issue in manifest.issues:
            ex.add(issue.path, issue.field, issue.rule, issue.message, issue.line)
        ex.run()
    except _Stop:
        pass
    batch = ExpandedBatch(
        source=manifest.source,
        name=manifest.name,
        digest=manifest.digest,
        jobs=ex.jobs,
        problems=[manifest.problem(i) for i in sorted(ex.issues, key=_issue_order)],
        problems_truncated=ex.truncated,
        stats=_stats(len(manifest.items), ex.jobs, len(ex.variant_ids)),
    )
    if raise_on_problems:
        batch.raise_for_problems()
    return batch
