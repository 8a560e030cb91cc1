"""The farm's Celery names: the one task and the two queues (binding: see docs/farm-design.md).

Torch-free and Celery-free: producers and workers both import this.
"""

from __future__ import annotations

from farm.ledger.status import PRIORITIES

#: The one task. Its args are ``[job_id]``: a UUID string and nothing else (a wake-up).
TASK_RENDER = "farm.render"
#: Jobs someone is waiting for.
QUEUE_INTERACTIVE = "farm.interactive"
#: Everything else (manifest batches).
QUEUE_BATCH = "farm.batch"
#: Every queue, in the order a worker lists them.
QUEUES: tuple[str, ...] = (QUEUE_INTERACTIVE, QUEUE_BATCH)
#: Short names accepted by ``farm worker --queues`` (``interactive,batch``).
QUEUE_BY_SHORT_NAME: dict[str, str] = {"interactive": QUEUE_INTERACTIVE, "batch": QUEUE_BATCH}


def queue_for(priority: str) -> str:
    """The queue a job of ``priority`` (``interactive`` or ``batch``) is sent to."""
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}; valid: {', '.join(PRIORITIES)}")
    return QUEUE_INTERACTIVE if priority == "interactive" else QUEUE_BATCH


def parse_queues(text: str) -> list[str]:
    """``"interactive,batch"`` (short or full names) -> the queue names, in the given order."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name = QUEUE_BY_SHORT_NAME.get(part, part)
        if name not in QUEUES:
            raise ValueError(f"unknown queue {part!r}; valid: interactive, batch")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("no queue named")
    return names
