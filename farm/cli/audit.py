"""Checking what the farm produced: ``farm rerender JOB`` and ``farm audit [BATCH]``.

* ``rerender`` renders a succeeded job again from its recorded spec (never from the cache) and,
  with ``--wait``, compares the frames hash: exit 0 on a match, 1 on a mismatch (the environment,
  weights and effective-parameter differences are listed) or when the re-render failed, 124 on
  timeout. Without ``--wait`` it prints the new job's id (``farm wait`` it, then run
  ``farm rerender --report NEW_JOB``).
* ``audit`` re-hashes every succeeded job's stored MP4 (of one batch, or all) against the
  ledger's record and writes the verdicts to the ledger (a missing or corrupt output is never
  answered from by the cache): exit 0 when all are intact, 1 when any is missing or corrupt.
  ``--repair`` then moves each bad output's directory to the store's quarantine, renders the job
  that made it again (a worker must be running), waits, and prints one verdict line per output on
  stdout — ``MATCH`` (same frames, the file is back and intact), ``MISMATCH`` (other frames: the
  differences are listed) or ``FAILED`` (with the reason) — then audits again: exit 0 when every
  output matched and the audit is clean, 1 otherwise, 124 when ``--timeout`` passed first.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from farm.cli.common import EXIT_FAILED, EXIT_OK, emit_json, handle_errors, json_option, option
from farm.cli.options import client_options, open_client
from farm.cli.status import EXIT_TIMEOUT

if TYPE_CHECKING:
    from farm.client import AuditReport, RerenderReport
    from farm.client.reports import RepairReport


def rerender_exit(r: RerenderReport, waited: bool) -> int:
    """The exit code of ``farm rerender``: 0 unless it waited and the frames differ (1) or time ran out (124)."""
    if not waited:
        return EXIT_OK
    if r.timed_out:
        return EXIT_TIMEOUT
    return EXIT_OK if r.match else EXIT_FAILED


def _print_rerender(r: RerenderReport, waited: bool) -> None:
    click.echo(r.job_id)
    if not waited:
        click.echo(f"re-render of {r.parent_job_id} queued as {r.job_id}", err=True)
        return
    if r.timed_out or not r.finished:
        click.echo(f"re-render {r.job_id} not finished ({r.status})", err=True)
    elif r.match is None:
        click.echo(f"re-render {r.job_id} {r.status}: {r.error or 'no frames to compare'}", err=True)
    elif r.match:
        click.echo(f"MATCH: frames sha256 {r.frames_sha256} (as job {r.parent_job_id})", err=True)
    else:
        click.echo(f"MISMATCH: frames sha256 {r.frames_sha256}, job {r.parent_job_id} had "
                   f"{r.parent_frames_sha256}", err=True)
        causes = r.causes
        click.echo("why: " + ("; ".join(causes) if causes else "nothing recorded differs that changes frames "
                              "(same parameters, weights and environment): report it"), err=True)
    if r.finished and (r.differences or r.match is False):
        click.echo(f"differences ({len(r.differences)}):" if r.differences else "no recorded differences", err=True)
        for d in r.differences:
            click.echo(f"  {d}", err=True)


def _print_repair(report: RepairReport) -> None:
    for item in report.items:
        click.echo(f"{item.verdict:<9}{item.uri}  ({item.found}; {len(item.job_ids)} job(s); re-render "
                   f"{item.rerender_job_id}): {item.reason}")
        if item.quarantined_to:
            click.echo(f"  quarantined to {item.quarantined_to}")
        for d in item.differences:
            click.echo(f"  {d}")
    matched = sum(1 for i in report.items if i.verdict == "MATCH")
    after = "not run (timed out)" if report.after is None else ("clean" if report.after.clean else "NOT clean")
    click.echo(f"{len(report.items)} bad output(s): {matched} repaired (MATCH); audit after repair: {after}",
               err=True)


def _print_audit(report: AuditReport) -> None:
    for entry in report.missing:
        click.echo(f"MISSING  {entry.job_id}  {entry.path or '-'}  ({entry.detail})")
    for entry in report.corrupt:
        click.echo(f"CORRUPT  {entry.job_id}  {entry.path}  expected {entry.expected}, got {entry.actual}")
    click.echo(
        f"{report.checked} checked: {len(report.ok)} ok, {len(report.missing)} missing, "
        f"{len(report.corrupt)} corrupt", err=True,
    )


def register(group: click.Group) -> None:
    """Add ``farm rerender`` and ``farm audit`` to ``group``."""
    @group.command("rerender")
    @click.argument("job_id", metavar="JOB")
    @option("--wait", "wait_flag", is_flag=True, default=False, help="Wait for the re-render and compare.")
    @option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=None,
            help="With --wait: give up after this many seconds (exit 124).")
    @option("--poll", "poll_s", type=click.FloatRange(min=0.05), default=1.0, help="Seconds between polls.")
    @option("--report", "report_only", is_flag=True, default=False,
            help="JOB is an earlier re-render: only print its comparison.")
    @client_options
    @json_option()
    @handle_errors()
    def rerender(job_id: str, wait_flag: bool, timeout_s: float | None, poll_s: float, report_only: bool,
                 database_url: str | None, broker_url: str | None, as_json: bool) -> None:
        """Render a succeeded JOB again and compare its frames hash with the original."""
        with open_client(database_url, broker_url) as client:
            if report_only:
                report = client.rerender_report(job_id)
            else:
                report = client.rerender(job_id, wait=wait_flag, timeout_s=timeout_s, poll_s=poll_s)
        waited = wait_flag or report_only
        if as_json:
            emit_json(report.to_dict())
        else:
            _print_rerender(report, waited)
        sys.exit(rerender_exit(report, waited))

    @group.command("audit")
    @click.argument("batch_id", metavar="[BATCH]", required=False)
    @option("--repair", is_flag=True, default=False,
            help="Quarantine each missing/corrupt output, render it again, verify it (MATCH/MISMATCH).")
    @option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=None,
            help="With --repair: give up waiting for the re-renders after this many seconds (exit 124).")
    @option("--poll", "poll_s", type=click.FloatRange(min=0.05), default=1.0, help="Seconds between polls.")
    @client_options
    @json_option()
    @handle_errors()
    def audit(batch_id: str | None, repair: bool, timeout_s: float | None, poll_s: float, database_url: str | None,
              broker_url: str | None, as_json: bool) -> None:
        """Re-hash every succeeded job's stored file against its record (the verdicts go to the ledger).

        Exit 1 if any is missing or corrupt. --repair fixes them.
        """
        with open_client(database_url, broker_url) as client:
            if not repair:
                report = client.audit(batch_id)
                if as_json:
                    emit_json(report.to_dict())
                else:
                    _print_audit(report)
                sys.exit(EXIT_OK if report.clean else EXIT_FAILED)
            repaired = client.repair(batch_id, timeout_s=timeout_s, poll_s=poll_s)
        if as_json:
            emit_json(repaired.to_dict())
        else:
            _print_audit(repaired.before)
            _print_repair(repaired)
        if repaired.timed_out:
            sys.exit(EXIT_TIMEOUT)
        sys.exit(EXIT_OK if repaired.ok else EXIT_FAILED)
