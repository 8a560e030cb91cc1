"""``farm status ID...`` and ``farm wait ID...``: where jobs and batches stand.

Each takes one or more ids (jobs or batches, mixed): several are followed as one group. ``farm
wait`` shows a line redrawn in place (on a terminal; else printed when it changes) with the counts
per status, the progress and the ETA (shown once the group's workers have rendered enough of it
to have a pace). Exit codes: 0 every job succeeded, 1 any job failed or was cancelled, 124 the
``--timeout`` passed first.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from farm.cli.common import EXIT_FAILED, EXIT_OK, emit_json, handle_errors, json_option, option
from farm.cli.options import client_options, open_client

if TYPE_CHECKING:
    from farm.client import StatusReport

#: Exit code of ``farm wait`` (and ``farm rerender --wait``) when the timeout passed first
#: (the code GNU ``timeout`` uses).
EXIT_TIMEOUT = 124
#: Statuses in display order.
ORDER = ("queued", "running", "succeeded", "failed", "cancelled")


def format_eta(seconds: float | None) -> str:
    """``ETA 1h02m03s`` / ``ETA 2m03s`` / ``ETA 3s``, or ``ETA -`` when there is no estimate."""
    if seconds is None:
        return "ETA -"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"ETA {h}h{m:02d}m{s:02d}s" if h else f"ETA {m}m{s:02d}s" if m else f"ETA {s}s"


def status_line(r: StatusReport, *, eta: bool = True) -> str:
    """One line: kind and id, a progress bar, done/total, the counts per status, then the ETA (or ``done``)."""
    counts = "  ".join(f"{name} {r.counts.get(name, 0)}" for name in ORDER)
    width = 20
    filled = round(r.progress * width)
    bar = "#" * filled + "-" * (width - filled)
    line = f"{r.kind} {r.id}  [{bar}] {r.progress:6.1%}  {r.done}/{r.total}  {counts}"
    if r.finished:
        return f"{line}  done"
    return f"{line}  {format_eta(r.eta_s)}" if eta else line


def exit_code(r: StatusReport) -> int:
    """The exit code of ``farm wait``: 0 all succeeded, 1 any failed or cancelled, 124 timed out."""
    if r.timed_out:
        return EXIT_TIMEOUT
    return EXIT_OK if r.all_succeeded else EXIT_FAILED


class LineDrawer:
    """Redraws one status line on stderr (a terminal), or prints it when it changes."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""

    def __call__(self, r: StatusReport) -> None:
        """Show the report ``r``: redraw the line on a terminal, else print it when the counts change."""
        if self.tty:
            self.last = status_line(r)
            click.echo("\r\x1b[2K" + self.last, nl=False, err=True)
            return
        key = status_line(r, eta=False)  # print when the counts change, not each new ETA
        if key != self.last:
            click.echo(status_line(r), err=True)
            self.last = key

    def close(self) -> None:
        """End the redrawn line with a newline (on a terminal)."""
        if self.tty and self.last:
            click.echo("", err=True)


def register(group: click.Group) -> None:
    """Add ``farm status`` and ``farm wait`` to ``group``."""
    @group.command("status")
    @click.argument("ids", metavar="ID...", nargs=-1, required=True)
    @client_options
    @json_option()
    @handle_errors()
    def status(ids: tuple[str, ...], database_url: str | None, broker_url: str | None, as_json: bool) -> None:
        """Counts per status, progress and ETA of jobs and/or batches (several: as one group)."""
        with open_client(database_url, broker_url) as client:
            report = client.status(ids[0] if len(ids) == 1 else list(ids))
        if as_json:
            emit_json(report.to_dict())
        else:
            click.echo(status_line(report))
            for reason in report.waiting:
                click.echo(f"waiting: {reason}")

    @group.command("wait")
    @click.argument("ids", metavar="ID...", nargs=-1, required=True)
    @option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=None,
            help="Give up after this many seconds (exit 124).")
    @option("--poll", "poll_s", type=click.FloatRange(min=0.05), default=1.0, help="Seconds between polls.")
    @client_options
    @json_option()
    @handle_errors()
    def wait(ids: tuple[str, ...], timeout_s: float | None, poll_s: float, database_url: str | None,
             broker_url: str | None, as_json: bool) -> None:
        """Wait until every job of the IDs (jobs and/or batches) finished.

        Exit 0 when all succeeded, 1 when any failed or was cancelled, 124 on timeout.
        """
        drawer = None if as_json else LineDrawer()
        with open_client(database_url, broker_url) as client:
            try:
                report = client.wait(ids[0] if len(ids) == 1 else list(ids), timeout_s=timeout_s, poll_s=poll_s,
                                     on_progress=drawer)
            finally:
                if drawer is not None:
                    drawer.close()
        if as_json:
            emit_json(report.to_dict())
        elif report.timed_out:
            click.echo(f"timed out after {timeout_s} s: {report.done}/{report.total} finished", err=True)
        sys.exit(exit_code(report))
