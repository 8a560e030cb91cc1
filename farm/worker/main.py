"""Starting render work on this machine.

The one place that pins a process to its device, names it, builds the Celery app, registers the
task and starts the worker; also ``farm render`` (one job through the same runner, in this
process) and ``farm reap`` (one reaper pass).

``farm worker --device cuda:3`` pins the process to GPU 3 *before* torch is imported:
``CUDA_VISIBLE_DEVICES=3`` and ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` are set in the process
environment, and the engine then renders on ``cuda:0`` (the only GPU it sees). A CPU worker hides
every GPU (``CUDA_VISIBLE_DEVICES=""``). The Celery worker runs the *solo* pool (one task at a
time, in this process: no fork, CUDA-safe), with task events on.

**Names.** One format for every process that renders: ``<role>-<slot>@<host>`` — ``farm-gpu3@host``
for the worker pinned to GPU 3, ``farm-cpu@host`` for a CPU worker, ``render-cpu@host`` for
``farm render``. The name is the Celery node name, the ``workers`` row and the lease owner of the
jobs it claims, and it is stable across restarts (no process id: Flower and Prometheus keep one
series per worker). A second worker with the same name on the same host is refused at start
while the first is alive (give ``--hostname``).

Importing this module is cheap: torch and Celery are imported inside the functions.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.errors import InvalidInput
from farm.settings import Settings, set_process_environment

if TYPE_CHECKING:
    from farm.ledger import JobRecord, Ledger
    from farm.queue.enqueue import ReapReport
    from farm.spec import RenderSpec
    from farm.worker.runner import Outcome

log = logging.getLogger(__name__)

_CUDA = re.compile(r"^cuda:(\d+)$")
#: Role of the processes ``farm worker`` starts, and of ``farm render``'s in-process runner.
WORKER_ROLE = "farm"
RENDER_ROLE = "render"
#: Default seconds a warm shutdown (SIGTERM) lets the current render run before handing its jobs
#: back (keep it under the orchestrator's grace period, e.g. Kubernetes' terminationGracePeriodSeconds).
DEFAULT_STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DevicePlan:
    """How a worker process is pinned to its device."""

    #: The device as named on the command line (``cuda:3``, ``cpu``): recorded with each job.
    device: str
    #: The torch device the engine uses once ``env`` is applied (``cuda:0``, ``cpu``).
    torch_device: str
    #: Process environment to set before torch is imported.
    env: dict[str, str] = field(default_factory=dict)
    #: The device part of the name (``gpu3``, ``cpu``).
    slot: str = "cpu"


def device_plan(device: str) -> DevicePlan:
    """The pinning for ``--device`` (``cpu``, ``cuda:N`` or ``N``); :class:`InvalidInput` otherwise."""
    text = device.strip()
    if text.isdigit():
        text = f"cuda:{text}"
    if text == "cpu":
        return DevicePlan("cpu", "cpu", {"CUDA_VISIBLE_DEVICES": ""}, "cpu")
    match = _CUDA.match(text)
    if match is None:
        raise InvalidInput.one("device", "device", f"--device takes cpu or cuda:N, got {device!r}")
    index = match.group(1)
    env = {"CUDA_VISIBLE_DEVICES": index, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    return DevicePlan(text, "cuda:0", env, f"gpu{index}")


def node_name(plan: DevicePlan, hostname: str | None = None, *, role: str = WORKER_ROLE) -> str:
    """The process's name (see the module docstring): ``hostname`` if given, else ``<role>-<slot>@<host>``."""
    return hostname or f"{role}-{plan.slot}@{socket.gethostname()}"


def pin_device(device: str) -> DevicePlan:
    """Apply :func:`device_plan` to this process's environment.

    Must run before torch is imported: a GPU worker whose process already imported torch cannot be
    pinned (RuntimeError).
    """
    plan = device_plan(device)
    if plan.torch_device != "cpu" and "torch" in sys.modules:
        raise RuntimeError(f"torch was imported before the worker pinned {plan.device}: CUDA_VISIBLE_DEVICES "
                           "would not apply")
    for key, value in plan.env.items():
        set_process_environment(key, value)
    return plan


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live farm process on this host (a reused pid of another program is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return b"farm" in cmdline.read_bytes()
    except OSError:
        return True


def refuse_duplicate(ledger: Ledger, name: str, settings: Settings) -> None:
    """:class:`InvalidInput` when another live process on this host already runs as ``name``."""
    from datetime import UTC, datetime

    row = next((w for w in ledger.list_workers() if w.name == name), None)
    if row is None or row.state == "stopped" or row.host != socket.gethostname() or row.pid == os.getpid():
        return
    silent_s = (datetime.now(UTC) - row.last_seen_at).total_seconds()
    if silent_s > settings.worker_stale_s or not _process_alive(row.pid):
        return
    raise InvalidInput.one(
        "hostname", "unique_worker",
        f"a worker named {name} already runs on this host (pid {row.pid}, seen {silent_s:.0f} s ago): give this "
        "one another name with --hostname NAME@%h")


def _names(text: str | None) -> list[str]:
    return [] if text is None else list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))


def serving_models(requested: str | None, settings: Settings) -> tuple[str, ...]:
    """The models this worker serves: their weights verified now, before it consumes anything.

    ``requested`` (``--models a,b``): exactly those; a directory model whose weights are not
    complete under ``FARM_MODEL_DIR`` refuses the start (:class:`InvalidInput` naming what is
    missing). None: every built-in model and every directory model whose weights are complete.
    A worker consumes only the queues of these models, so it never claims a job it cannot render.
    """
    from farm.engine.weights import missing_pieces, model_directory
    from farm.profiles import PROFILES

    names = _names(requested)
    for name in names:
        if name not in PROFILES:
            raise InvalidInput.one("models", "known_model",
                                   f"--models names unknown model {name!r}; known: {', '.join(sorted(PROFILES))}")
    served: list[str] = []
    for name in names or list(PROFILES):
        profile = PROFILES[name]
        if profile.source == "builtin":
            served.append(name)
            continue
        directory = model_directory(profile, settings.models_path)
        missing = missing_pieces(profile, directory)
        if not missing:
            served.append(name)
        elif names:
            raise InvalidInput.one(
                "models", "weights_present",
                f"this worker cannot serve {name}: its weights under {directory} are not complete; missing: "
                f"{'; '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        else:
            log.info("not serving %s: no complete weights under %s", name, settings.models_path)
    if not served:
        raise InvalidInput.one("models", "weights_present", "this worker serves no model")
    return tuple(served)


def device_memory_mb(plan: DevicePlan) -> int | None:
    """Total memory of the worker's device in MiB (the GPU's, or the host's for a CPU worker)."""
    if plan.torch_device == "cpu":
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
        except (ValueError, OSError):
            return None
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(0).total_memory // 2**20)


def run_worker(device: str, *, queues: str, hostname: str | None, loglevel: str | None, stop_timeout_s: float,
               settings: Settings, worker_options: dict[str, Any] | None = None, models: str | None = None,
               tags: str | None = None) -> int:
    """Pin the device, then run the Celery worker in this process until it stops; its exit code.

    It consumes the queues of ``queues``' classes for the models it serves
    (:func:`serving_models`), and records both, its ``tags`` and its device memory in its
    ``workers`` row.
    """
    plan = pin_device(device)
    from farm.ledger import Ledger
    from farm.queue.app import make_app
    from farm.queue.names import parse_queues, queues_for
    from farm.worker import task
    from farm.worker.runtime import WorkerConfig, configure

    try:
        classes = parse_queues(queues)
    except ValueError as exc:
        raise InvalidInput.one("queues", "queues", str(exc)) from None
    served = serving_models(models or settings.worker_models, settings)
    queue_names = queues_for(classes, served)
    settings = Settings(**{**settings.model_dump(), "device": plan.torch_device})
    name = node_name(plan, hostname)
    with Ledger.from_settings(settings) as ledger:  # the schema is usable (embedded: created) before consuming
        refuse_duplicate(ledger, name, settings)
    app = make_app(settings)
    task.register(app)
    log.info("%s serves %s: consuming %s", name, ", ".join(served), ", ".join(queue_names))
    configure(WorkerConfig(settings, name, plan.device, tuple(queue_names), stop_timeout_s, models=served,
                           tags=tuple(_names(tags or settings.worker_tags)), device_memory_mb=device_memory_mb(plan)),
              app)
    options: dict[str, Any] = {
        "hostname": name,
        "pool": "solo",
        "concurrency": 1,
        "queues": queue_names,
        "loglevel": (loglevel or settings.log_level).upper(),
        "task_events": True,
        "prefetch_multiplier": 1,
        "without_mingle": True,
        "without_gossip": True,
        "optimization": "fair",
        "quiet": True,
    }
    options.update(worker_options or {})
    worker = app.Worker(**options)
    worker.start()
    return int(worker.exitcode or 0)


@dataclass(frozen=True)
class LocalRender:
    """What ``farm render`` did: the job as the ledger has it now, and the runner's outcome."""

    job: JobRecord
    outcome: Outcome


def render_locally(spec: RenderSpec, settings: Settings, *, no_cache: bool = False) -> LocalRender:
    """Record ``spec`` as a job and run it through the same runner a worker uses, in this process.

    Claim, render, store, record: the embedded default's main path. An identical job whose output
    is verified is answered from it without rendering.
    """
    from farm.ledger import Ledger, NewJob
    from farm.store import open_store
    from farm.worker.runner import build_runner

    plan = device_plan(settings.device)
    store = open_store(settings)
    with Ledger.from_settings(settings) as ledger:
        new_job = NewJob.from_spec(spec, max_attempts=settings.max_attempts, no_cache=no_cache)
        job_id = ledger.add_job(new_job, output_ok=store.vouches)
        runner = build_runner(settings, ledger, owner=node_name(plan, role=RENDER_ROLE), device=settings.device)
        outcome = runner.run([job_id])[0]
        return LocalRender(ledger.get_job(job_id), outcome)


def reap_now(settings: Settings) -> ReapReport:
    """One reaper pass (``farm reap``).

    Expired leases back to queued or failed, and every queued job whose message was never sent or
    was lost sent again.
    """
    from farm.ledger import Ledger
    from farm.queue.app import make_app
    from farm.queue.enqueue import reap

    with Ledger.from_settings(settings) as ledger:
        return reap(ledger, settings, app=make_app(settings))
