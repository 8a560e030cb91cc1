"""``farm batch MANIFEST``: submit a batch manifest to the farm; prints the batch id.

The whole manifest is validated first (any problem: exit 2 listing file, item, line, field and
rule; nothing is written or sent). All jobs are written in one ledger transaction, then sent.
Submitting the same manifest again prints the same batch id and sends only the jobs never sent
(the way to finish a submission that was interrupted). ``--no-cache`` renders every job even when
an identical one already succeeded; it is a batch of its own.
"""

from __future__ import annotations

from pathlib import Path

import click

from farm.cli.common import emit_json, handle_errors, json_option, not_sent_exit, option
from farm.cli.options import client_options, open_client


def register(group: click.Group) -> None:
    """Add ``farm batch`` to ``group``."""
    @group.command("batch")
    @click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
    @option("--no-cache", is_flag=True, default=False,
            help="Render every job, even those identical to a succeeded job (a separate batch).")
    @client_options
    @json_option()
    @handle_errors()
    def batch(manifest: Path, no_cache: bool, database_url: str | None, broker_url: str | None,
              as_json: bool) -> None:
        """Validate MANIFEST, record all its jobs, queue them; prints the batch id."""
        with open_client(database_url, broker_url) as client:
            sub = client.submit_batch(manifest, no_cache=no_cache)
            error = client.last_send_error
        if as_json:
            emit_json(sub.to_dict())
        else:
            click.echo(sub.batch_id)
            what = "new batch" if sub.created else "already submitted (same manifest): nothing new written"
            click.echo(f"{sub.name}: {sub.job_count} job(s), {what}; {sub.enqueued} enqueued now", err=True)
        not_sent_exit(sub.not_sent, error)
