"""``farm jobs``: look at jobs in the ledger (through :class:`farm.client.Client`).

* ``farm jobs list [--batch B] [--status S] [--starred|--unstarred] [--limit N] [--json]`` — newest first;
* ``farm jobs show ID [--json]`` — every recorded field of one job and its event trail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from farm.cli.common import database_option, emit_json, handle_errors, json_option, option
from farm.cli.options import open_client

if TYPE_CHECKING:
    from farm.client import Client
    from farm.ledger import EventRecord, JobRecord

#: Valid --status values (kept here so the CLI starts without importing SQLAlchemy).
STATUS_CHOICES = ("queued", "running", "succeeded", "failed", "cancelled")
#: Most characters of a prompt shown in a list row.
PROMPT_PREVIEW_CHARS = 48
#: Largest --limit accepted (farm.client.reads.MAX_LIST_LIMIT).
MAX_LIST_LIMIT = 10_000


def _open(database_url: str | None) -> Client:
    return open_client(database_url, None)


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def _preview(text: str) -> str:
    return text if len(text) <= PROMPT_PREVIEW_CHARS else text[: PROMPT_PREVIEW_CHARS - 3] + "..."


@click.group("jobs")
def jobs_group() -> None:
    """Inspect jobs in the ledger."""


@jobs_group.command("list")
@database_option()
@option("--batch", "batch_id", default=None, help="Only jobs of this batch id.")
@option("--status", type=click.Choice(STATUS_CHOICES), default=None, help="Only jobs in this status.")
@option("--starred/--unstarred", "starred", default=None,
        help="Only starred jobs (--starred) or only jobs that are not starred (--unstarred); default: both.")
@option("--limit", type=click.IntRange(1, MAX_LIST_LIMIT), default=100, help="Most jobs to list.")
@json_option()
@handle_errors()
def list_command(
    database_url: str | None, batch_id: str | None, status: str | None, starred: bool | None, limit: int,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    with _open(database_url) as client:
        found = client.list_jobs(batch_id=batch_id, status=status, starred=starred, limit=limit)
    if as_json:
        emit_json([j.to_dict() for j in found])
        return
    if not found:
        click.echo("no jobs")
        return
    click.echo(
        f"{'ID':36}  {'STATUS':9}  {'PRIORITY':11}  {'MODEL':16}  {'SEED':>20}  {'TRY':>5}  "
        f"{'CREATED':25}  PROMPT"
    )
    for j in found:
        click.echo(
            f"{j.id:36}  {j.status.value:9}  {j.priority:11}  {j.model_name:16}  {j.seed:>20}  "
            f"{f'{j.attempts}/{j.max_attempts}':>5}  {_when(j.created_at):25}  {_preview(j.prompt)}"
        )


def _show_text(job: JobRecord, trail: list[EventRecord]) -> None:
    lines = [
        ("id", job.id),
        ("status", job.status.value + (f" ({job.progress:.0%})" if job.status.value == "running" else "")),
        ("job key", job.job_key),
        ("batch", job.batch_id or "-"),
        ("batch index", "-" if job.batch_index is None else str(job.batch_index)),
        ("model", job.model_name),
        ("prompt", job.prompt),
        ("negative prompt", job.negative_prompt or "-"),
        ("seed", f"{job.seed} ({job.seed_strategy})"),
        ("priority", job.priority),
        ("compat key", job.compat_key),
        ("no cache", "yes" if job.no_cache else "no"),
        ("enqueued", _when(job.enqueued_at)),
        ("attempts", f"{job.attempts}/{job.max_attempts}"),
        ("worker", f"{job.worker_host} {job.worker_device or ''}".strip() if job.worker_host else "-"),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("output", job.output_uri or "-"),
        ("file sha256", job.file_sha256 or "-"),
        ("frames sha256", job.frames_sha256 or "-"),
        ("weights", job.weights_fingerprint or "-"),
        ("starred", "yes" if job.starred else "no"),
    ]
    if job.parent_job_id:
        lines.append(("re-render of", job.parent_job_id))
    if job.cache_of_job_id and job.status.value == "queued":
        lines.append(("follower of", job.cache_of_job_id))
    elif job.cache_of_job_id:
        lines.append(("cache of", job.cache_of_job_id))
    if job.error_type:
        lines.append(("error", f"{job.error_type}: {job.error_message or ''}"))
    if job.allow_degrade or job.degraded_reason:
        steps = f"steps {job.params.get('steps')} asked, {(job.effective_params or {}).get('steps', '-')} rendered"
        lines.append(("degraded", f"{job.degraded_reason} ({steps})" if job.degraded_reason else "no (allowed)"))
    if job.timings:
        lines.append(("timings", ", ".join(f"{k}={v}" for k, v in sorted(job.timings.items()))))
    if job.tags:
        lines.append(("tags", ", ".join(f"{k}={v}" for k, v in job.tags.items())))
    for label, value in lines:
        click.echo(f"{label + ':':17} {value}")
    click.echo("events:")
    for e in trail:
        change = f"{e.from_status.value if e.from_status else '-'} -> {e.to_status.value}"
        who = f" by {e.worker}" if e.worker else ""
        click.echo(f"  {_when(e.at):25}  {e.kind:14}  {change:22}{who}".rstrip())


@jobs_group.command("show")
@click.argument("job_id")
@database_option()
@json_option()
@handle_errors()
def show_command(job_id: str, database_url: str | None, as_json: bool) -> None:
    """Show one job: every recorded field and its event trail."""
    with _open(database_url) as client:
        job = client.get_job(job_id)
        trail = client.events(job_id)
    if as_json:
        emit_json({"job": job.to_dict(), "events": [e.to_dict() for e in trail]})
    else:
        _show_text(job, trail)


def register(group: click.Group) -> None:
    """Add the ``farm jobs`` group to ``group``."""
    group.add_command(jobs_group)
