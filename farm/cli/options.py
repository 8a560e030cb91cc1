"""The options several commands share, each defined once.

The render spec options (``farm render``, ``farm submit``), the seed options, the model and
priority choices, and the ledger / broker options with :func:`open_client`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from farm.cli.common import broker_option, database_option, option, settings_with
from farm.kinds import OutputFormat, Preset, Priority, Sampler, values
from farm.profiles import PROFILES

if TYPE_CHECKING:
    from farm.client import Client

F = TypeVar("F", bound=Callable[..., Any])


def _apply(fn: F, decorators: list[Callable[[F], F]]) -> F:
    for deco in reversed(decorators):
        fn = deco(fn)
    return fn


def client_options(fn: F) -> F:
    """``--database-url`` and ``--broker-url``."""
    return database_option()(broker_option()(fn))


def open_client(database_url: str | None, broker_url: str | None) -> Client:
    """A client on the ledger and broker named by the options (else the FARM_* settings)."""
    from farm.client import Client

    return Client(settings=settings_with(database_url=database_url, broker_url=broker_url))


def priority_option(default: str | None, help_text: str) -> Callable[[F], F]:
    """The ``--priority`` option with this default and help text."""
    return option("--priority", type=click.Choice(values(Priority)), default=default, help=help_text)


def seed_options(fn: F) -> F:
    """``--seed``, ``--seed-from-prompt``, ``--salt`` and ``--model``."""
    return _apply(fn, [
        option("--seed", type=int, default=None, help="Explicit seed (default: random, recorded)."),
        option("--seed-from-prompt", "seed_from_prompt_flag", is_flag=True, default=False,
               help="Derive the seed from the prompt (sha256; the same in every process)."),
        option("--salt", default="", help="Salt for --seed-from-prompt."),
        option("--model", default=None, type=click.Choice(sorted(PROFILES)), envvar="FARM_DEFAULT_MODEL",
               help="Model profile (default: FARM_DEFAULT_MODEL, else tiny)."),
    ])


def spec_options(fn: F) -> F:
    """The render spec options, plus ``--allow-degrade`` and ``--tag``.

    Their names map through :data:`farm.client.specs.SPEC_OPTIONS`.
    """
    return _apply(fn, [
        option("--negative-prompt", default=None, help="Negative prompt (default: the model's)."),
        option("--width", type=int, default=None, help="Width in pixels (multiple of 16)."),
        option("--height", type=int, default=None, help="Height in pixels (multiple of 16)."),
        option("--frames", type=int, default=None, help="Number of frames (4k+1)."),
        option("--fps", type=int, default=None, help="Frames per second of the video."),
        option("--steps", type=int, default=None, help="Denoising steps."),
        option("--guidance", type=float, default=None, help="Guidance scale (high-noise expert)."),
        option("--guidance-2", type=float, default=None, help="Guidance scale of the low-noise expert."),
        option("--boundary-ratio", type=float, default=None, help="Expert switch boundary in (0, 1)."),
        option("--flow-shift", type=float, default=None, help="Scheduler flow shift."),
        option("--sampler", type=click.Choice(values(Sampler)), default=None, help="Sampler."),
        option("--preset", type=click.Choice(values(Preset)), default=None,
               help="Speed preset: final (exact; default), draft (the profile's draft steps + step caching), "
                    "custom (step caching at --cache-threshold)."),
        option("--cache-threshold", type=float, default=None,
               help="Step caching threshold in (0, 1] for --preset custom (higher: faster, rougher)."),
        option("--output-format", type=click.Choice(values(OutputFormat)), default=None, help="Outputs to write."),
        option("--allow-degrade", is_flag=True, default=False,
               help="May render at draft settings when the farm is under load, or smaller after an out-of-memory."),
        option("--tag", "tags", multiple=True, help="KEY=VALUE tag (repeatable)."),
    ])
