"""The farm's Celery names: the one task and its queues, one per route (binding: see docs/farm-design.md).

A job's *route* is its class and its model (:func:`farm.kinds.route_of`, e.g. ``batch.tiny``); each
route is one queue, ``farm.<class>.<model>`` (``farm.interactive.wan2.2-t2v-a14b``). A worker
consumes the queues of the models whose weights it verified at start, so a node without a model's
weights never receives its jobs; a job whose model no live worker serves waits in its queue.

Torch-free and Celery-free: producers and workers both import this.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from farm.kinds import Priority, route_of, route_parts, values
from farm.profiles import PROFILES

#: The one task. Its args are ``[job_id]``: a UUID string and nothing else (a wake-up).
TASK_RENDER = "farm.render"
#: Prefix of every farm queue.
QUEUE_PREFIX = "farm"
#: Queue-name prefixes of the two classes: jobs someone is waiting for, and everything else.
QUEUE_INTERACTIVE = f"{QUEUE_PREFIX}.{Priority.INTERACTIVE.value}"
QUEUE_BATCH = f"{QUEUE_PREFIX}.{Priority.BATCH.value}"
#: Short names accepted by ``farm worker --queues`` (``interactive,batch``): the classes consumed.
CLASS_BY_NAME: dict[str, str] = {
    **{p: p for p in values(Priority)},
    QUEUE_INTERACTIVE: Priority.INTERACTIVE.value,
    QUEUE_BATCH: Priority.BATCH.value,
}


def queue_for(route: str) -> str:
    """The queue of ``route`` (``interactive.tiny`` -> ``farm.interactive.tiny``); ValueError otherwise."""
    try:
        route_parts(route)
    except ValueError:
        raise ValueError(f"unknown route {route!r}; a route is <{'|'.join(values(Priority))}>.<model>") from None
    return f"{QUEUE_PREFIX}.{route}"


def route_of_queue(queue: str) -> str:
    """The route a queue name carries (the inverse of :func:`queue_for`); ValueError otherwise."""
    prefix = f"{QUEUE_PREFIX}."
    if not queue.startswith(prefix):
        raise ValueError(f"not a farm queue: {queue!r}")
    route = queue[len(prefix):]
    route_parts(route)
    return route


def queues_for(classes: Sequence[str], models: Iterable[str]) -> list[str]:
    """The queues of ``classes`` x ``models``, class by class (interactive first when both).

    kombu's Redis transport rotates the queue order between polls, so a worker takes at most one
    job of each other queue between two jobs of one queue: interactive jobs wait for at most a
    few batch jobs per worker, and batch work is never starved.
    """
    names = list(dict.fromkeys(models))
    return [queue_for(route_of(priority, model)) for priority in classes for model in names]


def all_routes(models: Iterable[str] | None = None) -> list[str]:
    """Every route of ``models`` (default: every known model profile), interactive first."""
    chosen = list(PROFILES) if models is None else list(dict.fromkeys(models))
    return [route_of(priority, model) for priority in values(Priority) for model in chosen]


def all_queues(models: Iterable[str] | None = None) -> list[str]:
    """The queues of :func:`all_routes`."""
    return [queue_for(route) for route in all_routes(models)]


def parse_queues(text: str) -> list[str]:
    """``"interactive,batch"`` (or the prefixes ``farm.interactive``) -> the classes consumed, in order."""
    classes: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name = CLASS_BY_NAME.get(part)
        if name is None:
            raise ValueError(f"unknown queue class {part!r}; valid: {', '.join(values(Priority))}")
        if name not in classes:
            classes.append(name)
    if not classes:
        raise ValueError("no queue class named")
    return classes
