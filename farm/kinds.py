"""The closed sets farm's settings, spec, CLI and ledger share, as string enums.

Their values are what is stored, sent and typed on a command line. Dependency-free: every layer
may import it.

:class:`farm.ledger.status.JobStatus` (the job state machine) and
:class:`farm.worker.runner.OutcomeKind` live with the code that owns them.
"""

from __future__ import annotations

from enum import StrEnum


class Priority(StrEnum):
    """Which queue a job goes to: someone is waiting, or a batch."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


class WorkerState(StrEnum):
    """A worker process's state in the ``workers`` table."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    CIRCUIT_OPEN = "circuit_open"
    STOPPED = "stopped"


class OffloadPolicy(StrEnum):
    """Where a model's components live between uses (see :mod:`farm.engine.placement`)."""

    NONE = "none"
    MODEL = "model"
    EXPERT = "expert"
    SEQUENTIAL = "sequential"


class OutputFormat(StrEnum):
    """What a render writes besides its MP4 and poster."""

    MP4 = "mp4"
    MP4_FRAMES = "mp4+frames"


class Preset(StrEnum):
    """Speed presets: how much quality a render trades for time (see :mod:`farm.spec`).

    ``final`` renders exactly (the profile's steps, no step caching); ``draft`` takes the profile's
    draft steps and step caching (diffusers' First Block Cache at the profile's threshold);
    ``custom`` takes step caching at the spec's own ``cache_threshold``.
    """

    FINAL = "final"
    DRAFT = "draft"
    CUSTOM = "custom"


class Sampler(StrEnum):
    """The denoising schedulers a spec may name."""

    UNIPC = "unipc"
    EULER = "euler"


def values(kind: type[StrEnum]) -> tuple[str, ...]:
    """The enum's values, in definition order (for click choices, CHECK constraints, messages)."""
    return tuple(member.value for member in kind)


#: Separates a route's class from its model: ``interactive.wan2.2-t2v-a14b`` (priorities hold no dot).
ROUTE_SEPARATOR = "."


def route_of(priority: str, model: str) -> str:
    """The route of a job: its class (priority) and its model, e.g. ``batch.tiny``.

    Each route is one broker queue (:func:`farm.queue.names.queue_for`); a worker consumes the
    routes of the models whose weights it has.
    """
    return f"{priority}{ROUTE_SEPARATOR}{model}"


def route_parts(route: str) -> tuple[str, str]:
    """``(priority, model)`` of a route made by :func:`route_of`; ValueError otherwise."""
    priority, sep, model = route.partition(ROUTE_SEPARATOR)
    if not sep or not model or priority not in values(Priority):
        raise ValueError(f"not a route (priority.model): {route!r}")
    return priority, model
