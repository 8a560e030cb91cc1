"""Seed control: how a job's seed is chosen, reproducibly by construction.

Strategies (the name is recorded with every job as ``seed_strategy``):

* ``explicit`` — the seed given.
* ``pool`` — round-robin over a list of seeds (:class:`SeedPool`).
* ``prompt`` — derived from the normalised prompt and an optional salt with sha256
  (:func:`seed_from_prompt`): identical in every process and on every machine, unlike
  Python's salted ``hash()``, which must never be used for seeds.
* ``sweep`` — the neighbours of a base seed, base ± radius, skipping seeds outside the valid range
  (:func:`sweep`).
* ``random`` — drawn once from the OS's CSPRNG (:func:`random_seed`) and recorded: the record
  is what makes it reproducible.

Torch-free: the determinism helper that seeds torch lives in :mod:`farm.determinism`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from farm.errors import InvalidInput
from farm.spec import MAX_SEED, SEED_RANGE_TEXT, normalize_prompt

#: Domain separation for prompt-derived seeds; changing it changes every derived seed.
PROMPT_SEED_DOMAIN = b"farm.seed.prompt/1"
#: Largest sweep radius farm accepts (2*radius+1 jobs).
MAX_SWEEP_RADIUS = 10_000


def is_valid_seed(seed: object) -> bool:
    """True for an int (not a bool) in [0, 2^32-1] (:data:`farm.spec.MAX_SEED`)."""
    return isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED


def check_seed(seed: object, field: str = "seed") -> int:
    """``seed`` if it is valid, else :class:`InvalidInput` on ``field``."""
    if not is_valid_seed(seed):
        raise InvalidInput.one(field, "seed_range", f"must be an integer in {SEED_RANGE_TEXT}, got {seed!r}")
    return seed  # type: ignore[return-value]


def seed_from_prompt(prompt: str, salt: str = "") -> int:
    """A seed derived from the prompt: sha256 of (domain, salt, normalised prompt), 32 bits.

    The low 32 bits of the digest's first 8 bytes (big-endian): exactly the bits torch's
    generator used of the 63-bit seed farm derived before ``farm.spec/2``, so a derived seed
    renders the same frames as it did then.

    The same (prompt, salt) gives the same seed in every process, whatever PYTHONHASHSEED is.
    Whitespace and Unicode normalisation do not change it (the same normal form the renderer uses).
    """
    h = hashlib.sha256()
    h.update(PROMPT_SEED_DOMAIN)
    h.update(b"\0")
    h.update(salt.encode("utf-8"))
    h.update(b"\0")
    h.update(normalize_prompt(prompt).encode("utf-8"))
    return int.from_bytes(h.digest()[:8], "big") & MAX_SEED


def seeds_from_prompt(prompt: str, count: int, salt: str = "") -> list[int]:
    """``count`` distinct derived seeds.

    The first is :func:`seed_from_prompt`, the others use the salts ``salt#1``, ``salt#2``,
    ...
    """
    if count < 1:
        raise InvalidInput.one("count", "min_1", "must be at least 1")
    out = [seed_from_prompt(prompt, salt)]
    out.extend(seed_from_prompt(prompt, f"{salt}#{i}") for i in range(1, count))
    return out


def sweep(base: int, radius: int, *, include_base: bool = True) -> list[int]:
    """Seeds ``base - radius .. base + radius`` in ascending order, without invalid ones."""
    check_seed(base, "base")
    if not isinstance(radius, int) or isinstance(radius, bool) or not 0 <= radius <= MAX_SWEEP_RADIUS:
        raise InvalidInput.one("radius", "sweep_radius", f"must be an integer in [0, {MAX_SWEEP_RADIUS}]")
    lo = max(0, base - radius)
    hi = min(MAX_SEED, base + radius)
    return [s for s in range(lo, hi + 1) if include_base or s != base]


def random_seed() -> int:
    """A seed from the OS's CSPRNG. Record it: that record is the only way to render it again."""
    return secrets.randbits(32)


@dataclass
class SeedPool:
    """Round-robin over a fixed list of seeds."""

    seeds: Sequence[int]
    _next: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise InvalidInput.one("seed_pool", "not_empty", "must list at least one seed")
        for i, s in enumerate(self.seeds):
            check_seed(s, f"seed_pool[{i}]")
        self.seeds = tuple(self.seeds)

    def take(self) -> int:
        """The next seed, round-robin."""
        seed = self.seeds[self._next % len(self.seeds)]
        self._next += 1
        return seed

    def __iter__(self) -> Iterator[int]:
        while True:
            yield self.take()
