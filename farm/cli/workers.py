"""``farm workers [--json]``: the workers the ledger has seen (state, device, counters, models served, tags)."""

from __future__ import annotations

from typing import Any

import click

from farm.cli.common import database_option, emit_json, handle_errors, json_option
from farm.cli.options import open_client


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def _serves(worker: Any) -> str:
    models = "all" if worker.models is None else ",".join(worker.models)
    return f"{models} [{','.join(worker.tags)}]" if worker.tags else models


@click.command("workers")
@database_option()
@json_option()
@handle_errors()
def workers_command(database_url: str | None, as_json: bool) -> None:
    """List the workers in the ledger's workers table."""
    with open_client(database_url, None) as client:
        found = client.workers()
    if as_json:
        emit_json([w.to_dict() for w in found])
        return
    if not found:
        click.echo("no workers")
        return
    click.echo(
        f"{'NAME':32}  {'STATE':12}  {'DEVICE':8}  {'PID':>7}  {'OK':>6}  {'FAILED':>6}  {'IN A ROW':>8}  "
        f"{'STARTED':25}  {'LAST SEEN':25}  MODELS [TAGS]"
    )
    for w in found:
        click.echo(
            f"{w.name:32}  {w.state:12}  {w.device:8}  {w.pid:>7}  {w.jobs_succeeded:>6}  {w.jobs_failed:>6}  "
            f"{w.consecutive_failures:>8}  {_when(w.started_at):25}  {_when(w.last_seen_at):25}  {_serves(w)}"
        )


def register(group: click.Group) -> None:
    """Add ``farm workers`` to ``group``."""
    group.add_command(workers_command)
