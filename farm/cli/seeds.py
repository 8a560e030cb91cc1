"""``farm seeds``: preview the seeds each seed strategy chooses (nothing is stored).

The same functions the manifest expansion uses (:mod:`farm.seeds`), so what this prints is what a
manifest item with the same selection gets.
"""

from __future__ import annotations

from typing import Any

import click

from farm.cli.common import emit_json, handle_errors, json_option, option

MAX_PREVIEW_SEEDS = 10_000


def _show(payload: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(payload)
    else:
        for seed in payload["seeds"]:
            click.echo(seed)


def register(group: click.Group) -> None:
    """Add the ``farm seeds`` group to ``group``."""
    @group.group("seeds")
    def seeds() -> None:
        """Preview seeds: derived from a prompt, sweeps, pools, random draws."""

    @seeds.command("from-prompt")
    @click.argument("prompt")
    @option("--salt", default="", help="Salt mixed into the derivation (a new salt gives new seeds).")
    @option("--count", type=click.IntRange(1, MAX_PREVIEW_SEEDS), default=1, help="How many seeds.")
    @json_option()
    @handle_errors()
    def from_prompt(prompt: str, salt: str, count: int, as_json: bool) -> None:
        """Seeds derived from PROMPT (sha256 of the normalised prompt and the salt).

        The same in every process and on every machine; the first is the seed of
        seed: {from_prompt: {salt: S}}, the others use the salts S#1, S#2, ...
        """
        from farm.seeds import seeds_from_prompt
        from farm.spec import normalize_prompt

        values = seeds_from_prompt(prompt, count, salt)
        _show(
            {"strategy": "prompt", "prompt": normalize_prompt(prompt), "salt": salt, "seeds": values}, as_json
        )

    @seeds.command("sweep")
    @click.argument("base", type=int)
    @option("--radius", type=int, required=True, help="Seeds BASE-RADIUS .. BASE+RADIUS.")
    @option("--exclude-base", is_flag=True, default=False, help="Leave BASE itself out.")
    @json_option()
    @handle_errors()
    def sweep_cmd(base: int, radius: int, exclude_base: bool, as_json: bool) -> None:
        """The neighbours of BASE, ascending; seeds outside [0, 2^32-1] are skipped."""
        from farm.seeds import sweep

        values = sweep(base, radius, include_base=not exclude_base)
        _show({"strategy": "sweep", "base": base, "radius": radius, "seeds": values}, as_json)

    @seeds.command("pool")
    @click.argument("pool", nargs=-1, type=int, required=True)
    @option(
        "--take",
        type=click.IntRange(1, MAX_PREVIEW_SEEDS),
        default=None,
        help="Seeds to take (default: one round).",
    )
    @json_option()
    @handle_errors()
    def pool_cmd(pool: tuple[int, ...], take: int | None, as_json: bool) -> None:
        """Round-robin over the seeds POOL..., as items with seed: pool take them."""
        from farm.seeds import SeedPool

        seed_pool = SeedPool(list(pool))
        values = [seed_pool.take() for _ in range(take or len(pool))]
        _show({"strategy": "pool", "pool": list(pool), "seeds": values}, as_json)

    @seeds.command("random")
    @option("--count", type=click.IntRange(1, MAX_PREVIEW_SEEDS), default=1, help="How many seeds.")
    @json_option()
    @handle_errors()
    def random_cmd(count: int, as_json: bool) -> None:
        """Seeds drawn from the OS's CSPRNG (record them: the record is what reproduces a render)."""
        from farm.seeds import random_seed

        _show({"strategy": "random", "seeds": [random_seed() for _ in range(count)]}, as_json)
