"""What ``farm wait`` shows while it waits, and when it ends.

* On a terminal, a live display (rich) redrawn in place: the group's kind and id, a bar, the
  percentage, done/total, the counts per status and the ETA. It is laid out again for the
  terminal's width at every redraw and never wraps: before a line would pass the width it drops,
  in turn, to two lines, a shorter id, a narrower bar, no bar, short status names, and at last is
  cut with an ellipsis.
* Elsewhere (logs, CI): one plain line each time the counts change.
* At the end (both): one line per failed, then cancelled, job (status, id, recorded error on one
  line), at most :data:`MAX_LISTED` then ``... and N more``, and a summary line.

Everything goes to stderr; stdout stays for ``--json``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

import click
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

from farm.cli.status import ORDER, format_eta, status_line

if TYPE_CHECKING:
    from farm.client import StatusReport
    from farm.client.failures import Unsuccessful

#: The most failed/cancelled jobs listed at the end (the rest are counted).
MAX_LISTED = 20
#: The most characters of a job's error shown in the plain (non-terminal) listing.
MAX_ERROR_CHARS = 300
#: Between the pieces of a line.
SEP = "  "
#: The bar's width in cells: never narrower (it goes instead), never wider.
BAR_MIN, BAR_MAX = 10, 40
#: The narrowest bar for which everything stays on one line (else: two lines).
ONE_LINE_BAR_MIN = 20
#: Each status's colour, and its short name for narrow terminals.
STYLES = {"queued": "bright_black", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "yellow"}
SHORT = {"queued": "q", "running": "run", "succeeded": "ok", "failed": "fail", "cancelled": "cxl"}
#: Characters that stand for a UUID when an id is shortened.
SHORT_ID_CHARS = 8


def one_line(text: str | None, max_chars: int = MAX_ERROR_CHARS) -> str:
    """``text`` on one line.

    Control characters (newlines, escapes) and whitespace runs become one space, and the text is
    cut at ``max_chars`` with ``...``.
    """
    if not text:
        return ""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= max_chars else flat[: max(0, max_chars - 3)] + "..."


def _join(parts: Iterable[Text]) -> Text:
    return Text(SEP).join(p for p in parts if p.plain)


def bar(progress: float, width: int, *, ascii_only: bool = False) -> Text:
    """A bar ``width`` cells wide, filled to ``progress`` (0-1)."""
    filled = max(0, min(width, round(progress * width)))
    done_char, todo_char = ("#", "-") if ascii_only else ("\u2588", "\u2591")
    return Text.assemble((done_char * filled, "green"), (todo_char * (width - filled), "bright_black"))


def counts_text(r: StatusReport, *, short: bool = False) -> Text:
    """``queued 3  running 1  succeeded 5  failed 1  cancelled 0`` (``q 3  run 1  ok 5 ...`` when short)."""
    return _join(Text(f"{SHORT[s] if short else s} {r.counts.get(s, 0)}", STYLES[s]) for s in ORDER)


def _label(r: StatusReport, *, short: bool) -> Text:
    ident = r.id[:SHORT_ID_CHARS] if short and r.kind != "group" else r.id
    return Text(f"{r.kind} {ident}", "bold")


def _tail(r: StatusReport) -> Text:
    if r.finished:
        return Text("done", "green")
    if r.timed_out:
        return Text("timed out", "red")
    return Text(format_eta(r.eta_s))


def _with_bar(r: StatusReport, label: Text, rest: Sequence[Text], width: int, least: int, ascii_only: bool,
              ) -> Text | None:
    """``label``, a bar as wide as the room left (``least`` to :data:`BAR_MAX`), then ``rest``; None if no room."""
    fixed = _join([label, *rest]).cell_len + len(SEP)
    room = min(BAR_MAX, width - fixed)
    if room < least:
        return None
    return _join([label, bar(r.progress, room, ascii_only=ascii_only), *rest])


def _fit(candidates: Iterable[Text | None], width: int) -> Text:
    """The first candidate no wider than ``width``; else the last one cut with an ellipsis."""
    last = Text("")
    for text in candidates:
        if text is None:
            continue
        if text.cell_len <= width:
            return text
        last = text
    cut = last.copy()
    cut.truncate(width, overflow="ellipsis")
    return cut


def status_lines(r: StatusReport, width: int, *, ascii_only: bool = False) -> list[Text]:
    """The display of ``r`` as lines no wider than ``width`` cells: one when everything fits, else two."""
    width = max(1, width)
    numbers = [Text(f"{r.progress:6.1%}"), Text(f"{r.done}/{r.total}")]
    full, short = _label(r, short=False), _label(r, short=True)
    one = _with_bar(r, full, [*numbers, counts_text(r), _tail(r)], width, ONE_LINE_BAR_MIN, ascii_only)
    if one is not None:
        return [one]
    head = _fit([
        _with_bar(r, full, [*numbers, _tail(r)], width, BAR_MIN, ascii_only),
        _with_bar(r, short, [*numbers, _tail(r)], width, BAR_MIN, ascii_only),
        _join([short, *numbers, _tail(r)]),
        _join([*numbers, _tail(r)]),
    ], width)
    counts = _fit([counts_text(r), counts_text(r, short=True)], width)
    return [head, counts]


class StatusView:
    """A rich renderable of a report, laid out for the width it is given at each render."""

    def __init__(self, report: StatusReport) -> None:
        self.report = report

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in status_lines(self.report, options.max_width, ascii_only=options.ascii_only):
            line.no_wrap, line.overflow = True, "ellipsis"  # (a narrower console crops, never wraps)
            yield line


def failure_line(job: Unsuccessful, *, max_chars: int = MAX_ERROR_CHARS) -> Text:
    """``failed     <job id>  <ErrorType: message>`` on one line (no error: status and id only)."""
    error = one_line(job.error, max_chars)
    status = (f"{job.status:<9}", STYLES.get(job.status, ""))
    return Text.assemble(status, SEP, job.job_id, (SEP + error) if error else "")


def summary(r: StatusReport, timeout_s: float | None) -> Text:
    """The last line: all succeeded, how many did not (failed, cancelled), or the timeout."""
    failed, cancelled = r.counts.get("failed", 0), r.counts.get("cancelled", 0)
    if r.timed_out:
        after = "" if timeout_s is None else f" after {timeout_s:g} s"
        return Text(f"timed out{after}: {r.done}/{r.total} finished ({failed} failed, {cancelled} cancelled)",
                    "red")
    if r.all_succeeded:
        return Text(f"all {r.total} job(s) succeeded", "green")
    return Text(f"{failed + cancelled} of {r.total} job(s) did not succeed: {failed} failed, {cancelled} cancelled",
                "red")


def outcome_lines(r: StatusReport, unsuccessful: Sequence[Unsuccessful], timeout_s: float | None) -> list[Text]:
    """The failed and cancelled jobs (at most :data:`MAX_LISTED`, then ``... and N more``), then the summary."""
    shown = list(unsuccessful[:MAX_LISTED])
    lines = [failure_line(job) for job in shown]
    more = r.counts.get("failed", 0) + r.counts.get("cancelled", 0) - len(shown)
    if more > 0:
        lines.append(Text(f"... and {more} more"))
    lines.append(summary(r, timeout_s))
    return lines


class Display(Protocol):
    """Shows each report while ``farm wait`` waits (``__call__``), then the outcome."""

    def __call__(self, r: StatusReport) -> None:
        """Show the report ``r``."""

    def close(self) -> None:
        """Stop showing reports (idempotent)."""

    def outcome(self, r: StatusReport, unsuccessful: Sequence[Unsuccessful], timeout_s: float | None) -> None:
        """Show the failed/cancelled jobs and the summary."""


class PlainDisplay:
    """For logs and CI: a plain line each time the counts change (not each new ETA)."""

    def __init__(self) -> None:
        self.last = ""

    def __call__(self, r: StatusReport) -> None:
        """Print the report's line when its counts or progress changed."""
        key = status_line(r, eta=False)
        if key != self.last:
            click.echo(status_line(r), err=True)
            self.last = key

    def close(self) -> None:
        """Nothing to end: every line was complete."""

    def outcome(self, r: StatusReport, unsuccessful: Sequence[Unsuccessful], timeout_s: float | None) -> None:
        """Print the outcome lines as plain text."""
        for line in outcome_lines(r, unsuccessful, timeout_s):
            click.echo(line.plain, err=True)


class LiveDisplay:
    """For a terminal: the report redrawn in place (rich ``Live``), laid out for the current width."""

    def __init__(self, console: Console) -> None:
        self.console = console
        # (stdout is not taken over: it may be a pipe; nothing is printed there while waiting)
        self.live = Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=True)
        self.started = False

    def __call__(self, r: StatusReport) -> None:
        """Redraw the display with the report ``r``."""
        if not self.started:
            self.live.start()
            self.started = True
        self.live.update(StatusView(r), refresh=True)

    def close(self) -> None:
        """Leave the last drawing on screen and give the cursor back."""
        if self.started:
            self.live.stop()
            self.started = False

    def outcome(self, r: StatusReport, unsuccessful: Sequence[Unsuccessful], timeout_s: float | None) -> None:
        """Print the outcome lines, each cut to the terminal's width."""
        for line in outcome_lines(r, unsuccessful, timeout_s):
            self.console.print(line, no_wrap=True, overflow="ellipsis", crop=True, soft_wrap=False)


def make_display(tty: bool, console: Console | None = None) -> Display:
    """The live display on a terminal (``tty``), else the plain one.

    ``console``: where the live display draws (default: stderr).
    """
    if not tty:
        return PlainDisplay()
    return LiveDisplay(console if console is not None else Console(stderr=True))
