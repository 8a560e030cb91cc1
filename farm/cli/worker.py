"""``farm worker`` (one device, or ``--devices`` to supervise one process per GPU) and ``farm reap``.

``farm worker --device cuda:3`` pins the process to GPU 3 *before* torch is imported:
``CUDA_VISIBLE_DEVICES=3`` and ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` are set in the process
environment, and the engine then renders on ``cuda:0`` (the only GPU it sees). A CPU worker hides
every GPU (``CUDA_VISIBLE_DEVICES=""``). The Celery worker runs the *solo* pool (one task at a
time, in this process: no fork, CUDA-safe), with task events on, consuming both queues unless
``--queues`` narrows them. Its node name is ``farm-gpu3@<host>`` / ``farm-cpu-<pid>@<host>``.

This module imports neither torch nor Celery at import time (the CLI starts in well under a
second); the worker's modules are imported inside the commands.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

import click

from farm.cli.common import (
    broker_option,
    database_option,
    emit_json,
    handle_errors,
    json_option,
    option,
    settings_with,
)
from farm.errors import InvalidInput
from farm.settings import set_process_environment

#: Default seconds a warm shutdown lets the current render run before handing its jobs back
#: (keep it under the orchestrator's grace period, e.g. Kubernetes' terminationGracePeriodSeconds).
DEFAULT_STOP_TIMEOUT_S = 60.0
_CUDA = re.compile(r"^cuda:(\d+)$")


@dataclass(frozen=True)
class DevicePlan:
    """How a worker process is pinned to its device."""

    #: The device as named on the command line (``cuda:3``, ``cpu``): recorded with each job.
    device: str
    #: The torch device the engine uses once ``env`` is applied (``cuda:0``, ``cpu``).
    torch_device: str
    #: Process environment to set before torch is imported.
    env: dict[str, str] = field(default_factory=dict)
    #: Celery node name without the host (``farm-gpu3``, ``farm-cpu-<pid>``).
    node: str = ""


def device_plan(device: str, *, pid: int | None = None) -> DevicePlan:
    """The pinning for ``--device`` (``cpu``, ``cuda:N`` or ``N``); :class:`InvalidInput` otherwise."""
    text = device.strip()
    if text.isdigit():
        text = f"cuda:{text}"
    if text == "cpu":
        node = f"farm-cpu-{pid if pid is not None else os.getpid()}"
        return DevicePlan("cpu", "cpu", {"CUDA_VISIBLE_DEVICES": ""}, node)
    match = _CUDA.match(text)
    if match is None:
        raise InvalidInput.one("device", "device", f"--device takes cpu or cuda:N, got {device!r}")
    index = match.group(1)
    env = {"CUDA_VISIBLE_DEVICES": index, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    return DevicePlan(text, "cuda:0", env, f"farm-gpu{index}")


def node_name(plan: DevicePlan, hostname: str | None = None) -> str:
    """The Celery node name: ``--hostname`` if given, else ``<node>@<host>``."""
    return hostname or f"{plan.node}@{socket.gethostname()}"


def pin_device(device: str) -> DevicePlan:
    """Apply :func:`device_plan` to this process's environment. Must run before torch is imported:
    a GPU worker whose process already imported torch cannot be pinned (RuntimeError)."""
    plan = device_plan(device)
    if plan.torch_device != "cpu" and "torch" in sys.modules:
        raise RuntimeError(f"torch was imported before the worker pinned {plan.device}: CUDA_VISIBLE_DEVICES "
                           "would not apply")
    for key, value in plan.env.items():
        set_process_environment(key, value)
    return plan


def register(group: click.Group) -> None:
    @group.command("worker")
    @option("--device", default=None, envvar="FARM_DEVICE",
            help="One device for this worker process: cpu or cuda:N (default: FARM_DEVICE, else cpu).")
    @option("--devices", default=None,
            help="Supervise one worker process per GPU: 'all' (every visible GPU) or a list like 0,1 "
                 "(ignored when --device is given on the command line: the supervisor's children).")
    @option("--queues", default="interactive,batch", help="Queues to consume (interactive, batch).")
    @option("--hostname", default=None,
            help="Celery node name (default: farm-gpuN@<host> / farm-cpu-<pid>@<host>).")
    @option("--loglevel", default=None, envvar="FARM_LOG_LEVEL", help="Log level (default: FARM_LOG_LEVEL, INFO).")
    @option("--stop-timeout", type=float, default=DEFAULT_STOP_TIMEOUT_S,
            help="Seconds a warm shutdown (SIGTERM) waits for the current render before handing it back.")
    @database_option()
    @broker_option()
    @handle_errors()
    def worker(device: str | None, devices: str | None, queues: str, hostname: str | None, loglevel: str | None,
               stop_timeout: float, database_url: str | None, broker_url: str | None) -> None:
        """Run a render worker: take jobs from the queues and render them on one device."""
        ctx = click.get_current_context()
        on_command_line = click.core.ParameterSource.COMMANDLINE
        device_given = ctx.get_parameter_source("device") is on_command_line
        if devices is not None and device_given:
            if ctx.get_parameter_source("devices") is on_command_line:
                raise click.UsageError("give --device or --devices, not both")
            devices = None  # a supervised child: FARM_WORKER_DEVICES is its parent's
        if devices is not None and hostname is not None:
            raise click.UsageError("--hostname names one worker: it cannot be used with --devices")
        extra = ["--queues", queues, "--stop-timeout", str(stop_timeout)]
        if loglevel:
            extra += ["--loglevel", loglevel]
        for name, value in (("database_url", database_url), ("broker_url", broker_url)):
            if value and ctx.get_parameter_source(name) is on_command_line:
                extra += ["--" + name.replace("_", "-"), value]  # (from the environment, children inherit it)
        if devices is not None:
            sys.exit(supervise(devices, extra))
        sys.exit(run_worker(device or "cpu", queues=queues, hostname=hostname, loglevel=loglevel,
                            stop_timeout_s=stop_timeout, database_url=database_url, broker_url=broker_url))

    @group.command("reap")
    @database_option()
    @broker_option()
    @json_option()
    @handle_errors()
    def reap_command(database_url: str | None, broker_url: str | None, as_json: bool) -> None:
        """One reaper pass: expired leases back to queued (or failed at the attempt cap), and a
        message sent for every queued job whose message was never sent or was lost."""
        from farm.ledger import Ledger
        from farm.queue.app import make_app
        from farm.queue.enqueue import reap

        settings = settings_with(database_url=database_url, broker_url=broker_url)
        with Ledger.from_settings(settings) as ledger:
            report = reap(ledger, settings, app=make_app(settings))
        if as_json:
            emit_json(report.to_dict())
        else:
            click.echo(f"expired leases  {len(report.expired)}")
            click.echo(f"messages sent   {len(report.enqueued)}")
            if report.error:
                click.echo(f"error: {report.error}", err=True)
        if report.error:
            sys.exit(1)


def supervise(devices: str, extra: list[str]) -> int:
    """``farm worker --devices``: one child per device (see :mod:`farm.worker.supervisor`)."""
    import logging

    from farm.worker.supervisor import Supervisor, parse_devices, worker_command

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/supervisor] %(message)s")
    chosen = parse_devices(devices)
    click.echo(f"farm supervisor: {len(chosen)} worker(s): {', '.join(chosen)}", err=True)
    return Supervisor([(d, worker_command(d, extra)) for d in chosen]).run()


def run_worker(device: str, *, queues: str, hostname: str | None, loglevel: str | None, stop_timeout_s: float,
               database_url: str | None, broker_url: str | None = None,
               worker_options: dict[str, Any] | None = None) -> int:
    """Pin the device, then run the Celery worker in this process until it stops; its exit code."""
    plan = pin_device(device)
    from farm.ledger import Ledger
    from farm.queue import tasks
    from farm.queue.app import make_app
    from farm.queue.names import parse_queues
    from farm.worker.process import WorkerConfig, configure

    try:
        queue_names = parse_queues(queues)
    except ValueError as exc:
        raise InvalidInput.one("queues", "queues", str(exc)) from None
    settings = settings_with(database_url=database_url, broker_url=broker_url, device=plan.torch_device)
    Ledger.from_settings(settings).close()  # the schema is usable (embedded: created) before consuming
    app = make_app(settings)
    tasks.register(app)
    name = node_name(plan, hostname)
    configure(WorkerConfig(settings, name, plan.device, tuple(queue_names), stop_timeout_s), app)
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
