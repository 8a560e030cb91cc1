"""Seed selections in manifest items: ``seed:`` / ``seeds:`` parsed into a :class:`SeedSelection`.

A selection says how each prompt of an item gets its seeds; :meth:`SeedSelection.resolve` draws
them with the functions of :mod:`farm.seeds` (the ones ``farm seeds`` previews).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from farm.errors import InvalidInput
from farm.manifest.model import MAX_JOBS_PER_MANIFEST, ContentPath, short_repr
from farm.seeds import SeedPool, is_valid_seed, seeds_from_prompt, sweep
from farm.spec import SEED_RANGE_TEXT, SeedStrategy

#: The seed strategies a ``seed:`` mapping names (exactly one per mapping).
SEED_SELECTION_KEYS: tuple[str, ...] = ("from_prompt", "sweep", "random", "pool")
SEED_HELP = (
    "needs a seed selection: seed: <int> | pool | {from_prompt: true | {salt: S, count: N}} | "
    "{sweep: {base: B, radius: R}} | {random: N} | {pool: N}, or seeds: [<int>, ...]"
)


@dataclass(frozen=True)
class SeedSelection:
    """How an item chooses the seeds of each of its prompts."""

    strategy: SeedStrategy
    kind: Literal["list", "prompt", "sweep", "random", "pool"]
    seeds: tuple[int, ...] = ()
    salt: str = ""
    count: int = 1

    @property
    def per_prompt(self) -> int:
        """How many seeds (jobs) each prompt gets."""
        return len(self.seeds) if self.kind in ("list", "sweep") else self.count

    def resolve(self, prompt: str, pool: SeedPool | None, draw: Callable[[], int]) -> list[int]:
        """The seeds of ``prompt``: listed, derived from it, drawn with ``draw``, or taken from ``pool``."""
        if self.kind in ("list", "sweep"):
            return list(self.seeds)
        if self.kind == "prompt":
            return seeds_from_prompt(prompt, self.count, self.salt)
        if self.kind == "random":
            return [draw() for _ in range(self.count)]
        assert pool is not None
        return [pool.take() for _ in range(self.count)]


#: Reports one problem: (path in the content, field, rule, message).
AddProblem = Callable[[ContentPath, str, str, str], None]


class SeedSelectionReader:
    """Parses an item's seed selection, reporting every problem through ``add``."""

    def __init__(self, add: AddProblem) -> None:
        self.add = add

    def selection(self, item: dict[str, Any], path: ContentPath, has_pool: bool) -> SeedSelection | None:
        """The item's selection from ``seed:`` or ``seeds:``; None (problems reported) when it is broken."""
        if "seed" in item and "seeds" in item:
            self.add((*path, "seeds"), "seeds", "one_seed_selection", "give seed or seeds, not both")
            return None
        if "seeds" in item:
            return self.seed_list(item["seeds"], (*path, "seeds"))
        if "seed" not in item:
            self.add(path, "seed", "required", f"every item {SEED_HELP}")
            return None
        return self.seed_value(item["seed"], (*path, "seed"), has_pool)

    def seed_value(self, raw: Any, here: ContentPath, has_pool: bool) -> SeedSelection | None:
        """The selection a ``seed:`` value makes: a seed, ``pool``, or a one-key strategy mapping."""
        if is_valid_seed(raw):
            return SeedSelection("explicit", "list", (raw,))
        if raw == "pool":
            return self.pool_selection(1, here, has_pool)
        if isinstance(raw, int) and not isinstance(raw, bool):
            self.add(here, "seed", "seed_range", f"must be an integer in {SEED_RANGE_TEXT}, got {raw}")
            return None
        if isinstance(raw, list):
            self.add(here, "seed", "seed_selection", "a list of seeds goes under seeds: [...]")
            return None
        if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in SEED_SELECTION_KEYS:
            extra = ""
            if isinstance(raw, dict) and "from_prompt" in raw:
                extra = " (write seed: {from_prompt: {salt: ..., count: ...}})"
            self.add(
                here,
                "seed",
                "seed_selection",
                f"must be an integer, pool, or a mapping with one key of {', '.join(SEED_SELECTION_KEYS)}; "
                f"got {short_repr(raw)}{extra}",
            )
            return None
        kind, arg = next(iter(raw.items()))
        return self.strategy(kind, arg, (*here, kind), has_pool)

    def strategy(self, kind: str, arg: Any, here: ContentPath, has_pool: bool) -> SeedSelection | None:
        """The selection a ``seed: {<kind>: <arg>}`` mapping makes (``kind`` in SEED_SELECTION_KEYS)."""
        name = f"seed.{kind}"
        if kind == "random":
            count = self.count(arg, here, name)
            return None if count is None else SeedSelection("random", "random", count=count)
        if kind == "pool":
            count = self.count(arg, here, name)
            return None if count is None else self.pool_selection(count, here, has_pool)
        if kind == "from_prompt":
            return self.from_prompt(arg, here, name)
        return self.sweep_selection(arg, here, name)

    def seed_list(self, raw: Any, here: ContentPath) -> SeedSelection | None:
        """The selection a ``seeds:`` list makes: valid, distinct seeds, at most the job limit."""
        if not isinstance(raw, list) or not raw:
            self.add(here, "seeds", "type", f"must be a non-empty list of seeds (integers in {SEED_RANGE_TEXT})")
            return None
        ok = True
        for j, s in enumerate(raw):
            if not is_valid_seed(s):
                self.add(
                    (*here, j),
                    "seeds",
                    "seed_range",
                    f"seed {j + 1} must be an integer in {SEED_RANGE_TEXT}, got {short_repr(s)}",
                )
                ok = False
        if not ok:
            return None
        repeated = sorted(s for s, n in Counter(raw).items() if n > 1)
        if repeated:
            self.add(
                here, "seeds", "duplicate_seed", f"lists {repeated} more than once (the jobs would repeat)"
            )
            return None
        if len(raw) > MAX_JOBS_PER_MANIFEST:
            self.add(here, "seeds", "max_jobs", f"lists more than {MAX_JOBS_PER_MANIFEST} seeds")
            return None
        return SeedSelection("explicit", "list", tuple(raw))

    def count(self, value: Any, here: ContentPath, name: str) -> int | None:
        """``value`` if it is a whole number of seeds within the job limit, else None (a problem reported)."""
        if type(value) is int and 1 <= value <= MAX_JOBS_PER_MANIFEST:
            return value
        self.add(
            here,
            name,
            "count",
            f"must be a whole number of seeds in [1, {MAX_JOBS_PER_MANIFEST}], got {short_repr(value)}",
        )
        return None

    def pool_selection(self, count: int, here: ContentPath, has_pool: bool) -> SeedSelection | None:
        """``count`` seeds from the manifest's ``seed_pool:``, which must exist."""
        if not has_pool:
            self.add(
                here, "seed", "seed_pool_required", "takes seeds from seed_pool:, but the manifest has none"
            )
            return None
        return SeedSelection("pool", "pool", count=count)

    def from_prompt(self, arg: Any, here: ContentPath, name: str) -> SeedSelection | None:
        """The selection ``from_prompt: true`` or ``from_prompt: {salt: S, count: N}`` makes."""
        if arg is True:
            return SeedSelection("prompt", "prompt")
        if not isinstance(arg, dict):
            self.add(
                here, name, "seed_selection", f"must be true or {{salt: S, count: N}}, got {short_repr(arg)}"
            )
            return None
        ok = True
        for key in arg:
            if key not in ("salt", "count"):
                self.add((*here, key), f"{name}.{key}", "unknown_field", "from_prompt takes salt and count")
                ok = False
        salt = arg.get("salt", "")
        if not isinstance(salt, str):
            self.add(
                (*here, "salt"), f"{name}.salt", "type", f"must be text (quote it), got {short_repr(salt)}"
            )
            ok = False
        count = self.count(arg.get("count", 1), (*here, "count"), f"{name}.count")
        if not ok or count is None:
            return None
        return SeedSelection("prompt", "prompt", salt=salt, count=count)

    def sweep_selection(self, arg: Any, here: ContentPath, name: str) -> SeedSelection | None:
        """The selection ``sweep: {base: B, radius: R, include_base: ...}`` makes."""
        if not isinstance(arg, dict) or "base" not in arg or "radius" not in arg:
            self.add(here, name, "seed_selection", f"must be {{base: B, radius: R}}, got {short_repr(arg)}")
            return None
        extra = [k for k in arg if k not in ("base", "radius", "include_base")]
        for key in extra:
            self.add(
                (*here, key), f"{name}.{key}", "unknown_field", "sweep takes base, radius and include_base"
            )
        include = arg.get("include_base", True)
        if not isinstance(include, bool):
            self.add((*here, "include_base"), f"{name}.include_base", "type", "must be true or false")
            return None
        try:
            seeds = sweep(arg["base"], arg["radius"], include_base=include)
        except InvalidInput as exc:
            for p in exc.problems:
                self.add((*here, p.field), f"{name}.{p.field}", p.rule, p.message)
            return None
        if extra:
            return None
        if not seeds:
            self.add(here, name, "not_empty", "selects no seeds")
            return None
        return SeedSelection("sweep", "sweep", tuple(seeds))
