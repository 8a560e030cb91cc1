"""``farm worker`` (one device, or ``--devices`` to supervise one process per GPU) and ``farm reap``.

Click code only: pinning, naming and starting the worker live in :mod:`farm.worker.main`. Its node
name is ``farm-gpu3@<host>`` / ``farm-cpu@<host>`` (``--hostname`` for a second CPU worker on one
host). This module imports neither torch nor Celery at import time (the CLI starts in well under a
second).
"""

from __future__ import annotations

import sys

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
from farm.worker.main import DEFAULT_STOP_TIMEOUT_S


def register(group: click.Group) -> None:
    """Add ``farm worker`` and ``farm reap`` to ``group``."""
    @group.command("worker")
    @option("--device", default=None, envvar="FARM_DEVICE",
            help="One device for this worker process: cpu or cuda:N (default: FARM_DEVICE, else cpu).")
    @option("--devices", default=None,
            help="Supervise one worker process per GPU: 'all' (every visible GPU) or a list like 0,1 "
                 "(ignored when --device is given on the command line: the supervisor's children).")
    @option("--queues", default="interactive,batch", help="Classes of queues to consume (interactive, batch).")
    @option("--models", default=None,
            help="Models this worker serves, e.g. wan2.2-t2v-a14b,tiny (their weights are checked at start; "
                 "default: FARM_WORKER_MODELS, else every model whose weights are present). It consumes only "
                 "their queues.")
    @option("--tags", default=None,
            help="Tags this worker declares (e.g. h200,fast-disk; default: FARM_WORKER_TAGS): shown in farm "
                 "workers.")
    @option("--hostname", default=None,
            help="Worker name, NAME@HOST (%h: this host; default: farm-gpuN@<host> / farm-cpu@<host>).")
    @option("--loglevel", default=None, envvar="FARM_LOG_LEVEL", help="Log level (default: FARM_LOG_LEVEL, INFO).")
    @option("--stop-timeout", type=float, default=DEFAULT_STOP_TIMEOUT_S,
            help="Seconds a warm shutdown (SIGTERM) waits for the current render before handing it back.")
    @database_option()
    @broker_option()
    @handle_errors()
    def worker(device: str | None, devices: str | None, queues: str, models: str | None, tags: str | None,
               hostname: str | None, loglevel: str | None, stop_timeout: float, database_url: str | None,
               broker_url: str | None) -> None:
        """Run a render worker: take jobs from the queues and render them on one device."""
        ctx = click.get_current_context()
        devices = _supervised_devices(ctx, devices, hostname)
        extra = _child_arguments(ctx, queues=queues, stop_timeout=stop_timeout, loglevel=loglevel,
                                 database_url=database_url, broker_url=broker_url)
        for flag, value in (("--models", models), ("--tags", tags)):
            if value:
                extra += [flag, value]
        if devices is not None:
            sys.exit(supervise(devices, extra))
        from farm.worker.main import run_worker

        settings = settings_with(database_url=database_url, broker_url=broker_url)
        sys.exit(run_worker(device or "cpu", queues=queues, hostname=hostname, loglevel=loglevel,
                            stop_timeout_s=stop_timeout, settings=settings, models=models, tags=tags))

    @group.command("reap")
    @database_option()
    @broker_option()
    @json_option()
    @handle_errors()
    def reap_command(database_url: str | None, broker_url: str | None, as_json: bool) -> None:
        """One reaper pass.

        Expired leases back to queued (or failed at the attempt cap), and a message sent for
        every queued job whose message was never sent or was lost.
        """
        from farm.worker.main import reap_now

        report = reap_now(settings_with(database_url=database_url, broker_url=broker_url))
        if as_json:
            emit_json(report.to_dict())
        else:
            click.echo(f"expired leases  {len(report.expired)}")
            click.echo(f"messages sent   {len(report.enqueued)}")
            if report.error:
                click.echo(f"error: {report.error}", err=True)
        if report.error:
            sys.exit(1)


def _supervised_devices(ctx: click.Context, devices: str | None, hostname: str | None) -> str | None:
    """The ``--devices`` a ``farm worker`` supervises, or None for one worker process.

    A ``--device`` on the command line makes this process a supervised child: its ``--devices``
    (FARM_WORKER_DEVICES, its parent's) is dropped; both on the command line is a usage error, and
    so is ``--hostname`` with ``--devices``.
    """
    on_command_line = click.core.ParameterSource.COMMANDLINE
    device_given = ctx.get_parameter_source("device") is on_command_line
    if devices is not None and device_given:
        if ctx.get_parameter_source("devices") is on_command_line:
            raise click.UsageError("give --device or --devices, not both")
        devices = None  # a supervised child: FARM_WORKER_DEVICES is its parent's
    if devices is not None and hostname is not None:
        raise click.UsageError("--hostname names one worker: it cannot be used with --devices")
    return devices


def _child_arguments(ctx: click.Context, *, queues: str, stop_timeout: float, loglevel: str | None,
                     database_url: str | None, broker_url: str | None) -> list[str]:
    """The options a supervisor passes on to each child ``farm worker`` (after its ``--device``)."""
    on_command_line = click.core.ParameterSource.COMMANDLINE
    extra = ["--queues", queues, "--stop-timeout", str(stop_timeout)]
    if loglevel:
        extra += ["--loglevel", loglevel]
    for name, value in (("database_url", database_url), ("broker_url", broker_url)):
        if value and ctx.get_parameter_source(name) is on_command_line:
            extra += ["--" + name.replace("_", "-"), value]  # (from the environment, children inherit it)
    return extra


def supervise(devices: str, extra: list[str]) -> int:
    """``farm worker --devices``: one child per device (see :mod:`farm.worker.supervisor`)."""
    import logging

    from farm.worker.supervisor import Supervisor, parse_devices, worker_command

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/supervisor] %(message)s")
    chosen = parse_devices(devices)
    click.echo(f"farm supervisor: {len(chosen)} worker(s): {', '.join(chosen)}", err=True)
    return Supervisor([(d, worker_command(d, extra)) for d in chosen]).run()
