"""Working with jobs already submitted: ``farm cancel``, ``farm star``, ``farm sweep``, ``farm promote``.

* ``cancel`` takes a job or a batch: queued and running jobs are cancelled (a worker sees it at
  its next heartbeat); finished ones are listed and left alone. Exit 0.
* ``star`` bookmarks a job (``--unstar`` removes the mark).
* ``sweep`` queues the neighbours of a succeeded job's seed (seed-R..seed+R without the seed
  itself) as one batch, the same spec otherwise, each recording the job as its parent. Any succeeded job may
  be swept, starred or not.
* ``promote`` renders succeeded drafts (``--preset draft`` or ``custom``) again at ``final``: the
  same prompt, seed and size, the profile's full steps, no step caching; each new job records the
  draft as its parent. Several drafts become one batch.
"""

from __future__ import annotations

import click

from farm.cli.common import emit_json, handle_errors, json_option, not_sent_exit, option
from farm.cli.options import client_options, open_client
from farm.cli.submit import submission_summary


def register(group: click.Group) -> None:
    """Add ``farm cancel``, ``farm star``, ``farm sweep`` and ``farm promote`` to ``group``."""
    @group.command("cancel")
    @click.argument("any_id", metavar="ID")
    @client_options
    @json_option()
    @handle_errors()
    def cancel(any_id: str, database_url: str | None, broker_url: str | None, as_json: bool) -> None:
        """Cancel a job, or every unfinished job of a batch."""
        with open_client(database_url, broker_url) as client:
            report = client.cancel(any_id)
        if as_json:
            emit_json(report.to_dict())
            return
        for job_id in report.cancelled:
            click.echo(job_id)
        left = f"; {len(report.unchanged)} already finished, left alone" if report.unchanged else ""
        click.echo(f"{report.kind} {report.id}: {len(report.cancelled)} job(s) cancelled{left}", err=True)

    @group.command("star")
    @click.argument("job_id", metavar="JOB")
    @option("--unstar", is_flag=True, default=False, help="Remove the star instead.")
    @client_options
    @json_option()
    @handle_errors()
    def star(job_id: str, unstar: bool, database_url: str | None, broker_url: str | None, as_json: bool) -> None:
        """Star a job (a bookmark: farm results shows it; farm sweep explores around it)."""
        with open_client(database_url, broker_url) as client:
            changed = client.star(job_id, not unstar)
        state = "unstarred" if unstar else "starred"
        if as_json:
            emit_json({"job_id": job_id, "starred": not unstar, "changed": changed})
        else:
            click.echo(f"job {job_id} {state}" + ("" if changed else " (it already was)"))

    @group.command("sweep")
    @click.argument("job_id", metavar="JOB")
    @option("--radius", type=int, required=True, help="Neighbours on each side of the job's seed (1-10000).")
    @option("--priority", type=click.Choice(["interactive", "batch"]), default=None,
            help="Queue of the new jobs (default: the job's own).")
    @option("--no-cache", is_flag=True, default=False, help="Render even seeds already rendered.")
    @client_options
    @json_option()
    @handle_errors()
    def sweep(job_id: str, radius: int, priority: str | None, no_cache: bool, database_url: str | None,
              broker_url: str | None, as_json: bool) -> None:
        """Queue the seed neighbours of a succeeded job as one batch.

        Prints the new job ids (the batch id is on stderr and in --json: `farm wait BATCH`
        follows them all).
        """
        with open_client(database_url, broker_url) as client:
            sub = client.sweep_detailed(job_id, radius, priority=priority, no_cache=no_cache)
            error = client.last_send_error
        if as_json:
            emit_json({"parent_job_id": job_id, **sub.to_dict()})
        else:
            for new_id in sub.job_ids:
                click.echo(new_id)
            submission_summary(sub.to_dict())
        not_sent_exit(sub.not_sent, error)

    @group.command("promote")
    @click.argument("job_ids", metavar="JOB...", nargs=-1, required=True)
    @option("--priority", type=click.Choice(["interactive", "batch"]), default=None,
            help="Queue of the final renders (default: each draft's own).")
    @client_options
    @json_option()
    @handle_errors()
    def promote(job_ids: tuple[str, ...], priority: str | None, database_url: str | None, broker_url: str | None,
                as_json: bool) -> None:
        """Render succeeded drafts again at the final preset (same prompt, seed and size).

        Prints the new job ids; several drafts become one batch (its id on stderr and in --json).
        """
        with open_client(database_url, broker_url) as client:
            sub = client.promote(list(job_ids), priority=priority)
            error = client.last_send_error
        if as_json:
            emit_json({"parent_job_ids": list(job_ids), **sub.to_dict()})
        else:
            for new_id in sub.job_ids:
                click.echo(new_id)
            submission_summary(sub.to_dict())
        not_sent_exit(sub.not_sent, error)
