"""``farm health``: a worker node's healthcheck (ledger, broker, device, model weights).

Click code only: the checks live in :mod:`farm.worker.health`. Exit 0 when every check passed,
1 otherwise; one line per check (``--json``: one object). torch is imported only by the device check
of a ``cuda:N`` device.
"""

from __future__ import annotations

import sys

import click

from farm.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    broker_option,
    database_option,
    emit_json,
    handle_errors,
    json_option,
    option,
    settings_with,
)
from farm.worker.health import DEFAULT_HEALTH_TIMEOUT_S


def register(group: click.Group) -> None:
    """Add ``farm health`` to ``group``."""
    @group.command("health")
    @option("--device", default=None, envvar="FARM_DEVICE",
            help="The device the worker renders on: cpu or cuda:N (default: FARM_DEVICE, else cpu).")
    @option("--models", default=None,
            help="Models the worker serves (default: FARM_WORKER_MODELS, else every model whose weights are "
                 "present): each must have complete weights.")
    @option("--timeout", "timeout_s", type=click.FloatRange(0.1, 300), default=DEFAULT_HEALTH_TIMEOUT_S,
            help="Seconds every check may take; one that has not answered by then fails.")
    @database_option()
    @broker_option()
    @json_option()
    @handle_errors()
    def health_command(device: str | None, models: str | None, timeout_s: float, database_url: str | None,
                       broker_url: str | None, as_json: bool) -> None:
        """Check that this node can work: the ledger and the broker answer, the device and the weights are there."""
        from farm.worker.health import run_checks

        settings = settings_with(database_url=database_url, broker_url=broker_url)
        report = run_checks(settings, device=device or settings.device,
                            models=models if models is not None else settings.worker_models, timeout_s=timeout_s)
        if as_json:
            emit_json(report.to_dict())
        else:
            for line in report.lines():
                click.echo(line)
        sys.exit(EXIT_OK if report.healthy else EXIT_FAILED)
