"""``farm status ID...`` and ``farm wait ID...``: where jobs and batches stand.

Each takes one or more ids (jobs or batches, mixed): several are followed as one group. ``farm
wait`` shows, on a terminal, a live display fitted to the terminal's width (a bar, done/total,
the counts per status and the ETA, shown once the group's workers have rendered enough of it to
have a pace); elsewhere a plain line each time the counts change (:mod:`farm.cli.wait_view`).
At the end it lists the failed and cancelled jobs with their recorded errors, then a summary.

Exit codes of ``farm wait``: 0 every job succeeded, 1 any job failed or was cancelled, 124 the
``--timeout`` passed first, 4 (:data:`EXIT_UNKNOWN_ID`) an id is no job or batch; 2 is bad
usage or an id that is not a UUID, as for every command.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn

import click

from farm.cli.common import EXIT_FAILED, EXIT_OK, emit_json, handle_errors, json_option, option
from farm.cli.options import client_options, open_client
from farm.errors import BatchNotFound, JobNotFound

if TYPE_CHECKING:
    from farm.client import Client, StatusReport

#: Exit code of ``farm wait`` (and ``farm rerender --wait``) when the timeout passed first
#: (the code GNU ``timeout`` uses).
EXIT_TIMEOUT = 124
#: Exit code of ``farm wait`` when an id is neither a job nor a batch: unlike 1 (work failed), 2
#: (bad usage or input, e.g. an id that is not a UUID) and 3 (not sent), it says the id is wrong.
EXIT_UNKNOWN_ID = 4
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


def unknown_id_exit(exc: JobNotFound | BatchNotFound, as_json: bool) -> NoReturn:
    """Say which id is no job or batch (as JSON with ``--json``) and exit :data:`EXIT_UNKNOWN_ID`."""
    unknown = exc.job_id if isinstance(exc, JobNotFound) else exc.batch_id
    message = f"no job or batch has the id {unknown!r}"
    if as_json:
        emit_json({"error": type(exc).__name__, "message": message, "id": unknown})
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_UNKNOWN_ID)


def _target(ids: tuple[str, ...]) -> str | list[str]:
    return ids[0] if len(ids) == 1 else list(ids)


def _wait_json(client: Client, ids: tuple[str, ...], timeout_s: float | None, poll_s: float) -> NoReturn:
    report = client.wait(_target(ids), timeout_s=timeout_s, poll_s=poll_s)
    emit_json(report.to_dict())
    sys.exit(exit_code(report))


def _wait_shown(client: Client, ids: tuple[str, ...], timeout_s: float | None, poll_s: float) -> NoReturn:
    from farm.cli.wait_view import MAX_LISTED, make_display  # (rich loads for farm wait only)
    from farm.client.failures import unsuccessful_jobs

    display = make_display(sys.stderr.isatty())
    try:
        report = client.wait(_target(ids), timeout_s=timeout_s, poll_s=poll_s, on_progress=display)
    finally:
        display.close()
    unsuccessful = [] if report.all_succeeded else unsuccessful_jobs(client, ids, MAX_LISTED)
    display.outcome(report, unsuccessful, timeout_s)
    sys.exit(exit_code(report))


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

        On a terminal a live display (bar, done/total, counts per status, ETA) fitted to its
        width; else a plain line each time the counts change. Then, on stderr, the failed and
        cancelled jobs (id and error, at most 20) and a summary; --json prints the final report on
        stdout instead.

        Exit codes: 0 every job succeeded; 1 a job failed or was cancelled; 124 the --timeout
        passed first; 4 an ID is no job or batch; 2 bad usage or an ID that is not a UUID.
        """
        with open_client(database_url, broker_url) as client:
            try:
                if as_json:
                    _wait_json(client, ids, timeout_s, poll_s)
                _wait_shown(client, ids, timeout_s, poll_s)
            except (JobNotFound, BatchNotFound) as exc:
                unknown_id_exit(exc, as_json)
