"""``farm wait``'s display: fitted to the terminal's width, counts and ETA shown, failed jobs listed.

The renderer runs on rich consoles of fixed widths (as a terminal of that many columns would be);
every rendered line must fit, whatever the numbers.
"""

from __future__ import annotations

import io
import re

import pytest
from click.testing import CliRunner
from rich.console import Console
from rich.text import Text

from farm.cli import cli
from farm.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NOT_SENT, EXIT_OK
from farm.cli.status import EXIT_TIMEOUT, EXIT_UNKNOWN_ID, ORDER, format_eta
from farm.cli.wait_view import (
    BAR_MAX,
    BAR_MIN,
    MAX_LISTED,
    LiveDisplay,
    PlainDisplay,
    StatusView,
    make_display,
    one_line,
    outcome_lines,
    status_lines,
)
from farm.client.failures import Unsuccessful
from farm.client.reports import StatusReport

WIDTHS = (60, 80, 100, 200)
BATCH = "0b7c1e6e-3f4a-4c1b-9a51-2f0a9d6c8e11"
#: Escape sequences (colours, cursor moves) of a terminal's output.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def report(counts: dict[str, int], progress: float, eta_s: float | None, *, kind: str = "batch", ident: str = BATCH,
           timed_out: bool = False) -> StatusReport:
    full = {s: counts.get(s, 0) for s in ORDER}
    return StatusReport(ident, kind, sum(full.values()), full, progress, eta_s, timed_out)


REPORTS = {
    "small, running": report({"queued": 2, "running": 1, "succeeded": 3}, 0.55, 42.0),
    "huge, slow": report({"queued": 812_345, "running": 64, "succeeded": 100_001, "failed": 12_345,
                          "cancelled": 9_999}, 0.12, 3 * 3600 + 2 * 60 + 5.0),
    "no pace yet": report({"queued": 7}, 0.0, None),
    "finished": report({"succeeded": 9, "failed": 1}, 1.0, 0.0),
    "timed out": report({"queued": 1, "failed": 1}, 0.5, None, timed_out=True),
    "group": report({"running": 2, "succeeded": 5}, 0.8, 12.0, kind="group", ident="3 ids"),
}


def rendered(renderable: object, width: int) -> list[str]:
    console = Console(width=width, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    console.print(renderable)
    text = ANSI.sub("", console.file.getvalue())  # type: ignore[attr-defined]
    return text.rstrip("\n").split("\n")


def cells(line: str) -> int:
    return Text(line).cell_len


@pytest.mark.parametrize("width", [*WIDTHS, 40, 24, 12])
@pytest.mark.parametrize("name", sorted(REPORTS))
def test_no_line_is_wider_than_the_terminal(name: str, width: int) -> None:
    lines = rendered(StatusView(REPORTS[name]), width)
    assert 1 <= len(lines) <= 2
    assert all(cells(line) <= width for line in lines), (width, lines)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", sorted(REPORTS))
def test_counts_progress_and_eta_are_shown(name: str, width: int) -> None:
    r = REPORTS[name]
    shown = " ".join(rendered(StatusView(r), width))
    assert f"{r.done}/{r.total}" in shown and f"{r.progress:.1%}" in shown
    for status in ORDER:  # full names where they fit, short ones (q, run, ok, fail, cxl) else
        assert re.search(rf"\b(?:{status}|q|run|ok|fail|cxl) {r.counts[status]}\b", shown), (status, shown)
    tail = "done" if r.finished else "timed out" if r.timed_out else format_eta(r.eta_s)
    assert tail in shown
    if width >= 80:  # wide enough for the full status names
        assert all(f"{s} {r.counts[s]}" in shown for s in ORDER), shown


def test_the_layout_follows_the_width() -> None:
    r = REPORTS["small, running"]
    wide, mid, narrow = rendered(StatusView(r), 200), rendered(StatusView(r), 80), rendered(StatusView(r), 60)
    assert len(wide) == 1 and BATCH in wide[0] and "\u2588" in wide[0]  # all on one line, full id, a bar
    assert len(mid) == 2 and BATCH in mid[0]  # the counts on a line of their own
    assert len(narrow) == 2 and BATCH not in narrow[0] and BATCH[:8] in narrow[0]  # the id shortened
    # the bar takes the room there is, within bounds
    bar_cells = [line.count("\u2588") + line.count("\u2591") for line in (wide[0], mid[0], narrow[0])]
    assert bar_cells[0] == BAR_MAX and all(BAR_MIN <= n <= BAR_MAX for n in bar_cells), bar_cells
    assert cells(mid[0]) == 80  # mid: the bar takes the room left, up to the width exactly


def test_the_bar_is_filled_to_the_progress() -> None:
    [line] = [t.plain for t in status_lines(report({"succeeded": 1, "queued": 3}, 0.25, None), 200)]
    filled, empty = line.count("\u2588"), line.count("\u2591")
    assert filled == round(0.25 * (filled + empty)) and filled > 0
    [ascii_line] = [t.plain for t in status_lines(report({"succeeded": 1, "queued": 3}, 0.25, None), 200,
                                                  ascii_only=True)]
    assert "#" in ascii_line and "\u2588" not in ascii_line


def failures(n: int, status: str = "failed") -> list[Unsuccessful]:
    return [Unsuccessful(f"00000000-0000-4000-8000-{i:012d}", status, f"RenderError: boom {i}") for i in range(n)]


def test_failed_jobs_are_listed_then_counted() -> None:
    jobs = failures(MAX_LISTED + 5)
    r = report({"succeeded": 70, "failed": 25, "cancelled": 5}, 1.0, 0.0)
    lines = [t.plain for t in outcome_lines(r, jobs, None)]
    assert lines[:MAX_LISTED] == [f"failed     {j.job_id}  {j.error}" for j in jobs[:MAX_LISTED]]
    assert lines[MAX_LISTED] == f"... and {25 + 5 - MAX_LISTED} more"
    assert lines[-1] == "30 of 100 job(s) did not succeed: 25 failed, 5 cancelled"
    assert len(lines) == MAX_LISTED + 2


def test_summary_lines() -> None:
    ok = report({"succeeded": 4}, 1.0, 0.0)
    assert [t.plain for t in outcome_lines(ok, [], None)] == ["all 4 job(s) succeeded"]
    timed = REPORTS["timed out"]
    cancelled = Unsuccessful(BATCH, "cancelled", None)
    lines = [t.plain for t in outcome_lines(timed, [cancelled], 0.5)]
    assert lines[0] == f"cancelled  {BATCH}"  # no error recorded: status and id only
    assert lines[-1] == "timed out after 0.5 s: 1/2 finished (1 failed, 0 cancelled)"


def test_an_error_is_shown_on_one_line_and_never_interpreted() -> None:
    raw = "RenderError: CUDA out of memory.\nTried to allocate\t2.00 GiB\x1b[31m [bold]x[/bold]\r\n" + "y" * 500
    flat = one_line(raw)
    assert "\n" not in flat and "\r" not in flat and "\x1b" not in flat and "\t" not in flat
    assert flat.startswith("RenderError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert len(flat) == 300 and flat.endswith("...")
    job = Unsuccessful(BATCH, "failed", raw)
    r = report({"failed": 1}, 1.0, 0.0)
    for width in WIDTHS:
        console = Console(width=width, file=io.StringIO(), force_terminal=True)
        display = LiveDisplay(console)
        display.outcome(r, [job], None)
        lines = ANSI.sub("", console.file.getvalue()).rstrip("\n").split("\n")  # type: ignore[attr-defined]
        assert len(lines) == 2 and all(cells(line) <= width for line in lines), lines
        assert lines[0].startswith(f"failed     {BATCH}")
    wide = Console(width=400, file=io.StringIO(), force_terminal=True)
    LiveDisplay(wide).outcome(r, [job], None)
    assert "[bold]x[/bold]" in ANSI.sub("", wide.file.getvalue())  # type: ignore[attr-defined]


@pytest.mark.parametrize("width", WIDTHS)
def test_the_live_display_redraws_in_place_within_the_width(width: int) -> None:
    console = Console(width=width, file=io.StringIO(), force_terminal=True)
    display = make_display(True, console)
    assert isinstance(display, LiveDisplay)
    steps = [report({"queued": 3 - i, "succeeded": i}, i / 3, 10.0 * (3 - i) if i else None) for i in range(4)]
    for step in steps:
        display(step)
    display.close()
    display.outcome(steps[-1], [], None)
    raw = console.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[1A" in raw or "\x1b[2K" in raw  # cursor moved back: redrawn, not appended
    visible = [seg for line in ANSI.sub("", raw).split("\n") for seg in line.split("\r")]
    assert all(cells(seg) <= width for seg in visible), visible
    assert "all 3 job(s) succeeded" in visible and any("succeeded 3" in v or "ok 3" in v for v in visible)


def test_the_plain_display_prints_a_line_when_the_counts_change(capsys: pytest.CaptureFixture[str]) -> None:
    display = make_display(False)
    assert isinstance(display, PlainDisplay)
    display(report({"queued": 2}, 0.0, None))
    display(report({"queued": 2}, 0.0, 30.0))  # only the ETA changed: no new line
    display(report({"queued": 1, "succeeded": 1}, 0.5, 20.0))
    display(report({"succeeded": 1, "failed": 1}, 1.0, 0.0))
    display.close()
    display.outcome(report({"succeeded": 1, "failed": 1}, 1.0, 0.0), failures(1), None)
    captured = capsys.readouterr()
    assert captured.out == "" and "\x1b" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 5, lines
    assert "queued 2" in lines[0] and "succeeded 1" in lines[1] and lines[2].endswith("done")
    assert lines[3] == f"failed     {failures(1)[0].job_id}  RenderError: boom 0"
    assert lines[4] == "1 of 2 job(s) did not succeed: 1 failed, 0 cancelled"


def test_unknown_id_has_its_own_exit_code_in_the_help() -> None:
    others = {EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_SENT, EXIT_TIMEOUT}
    assert EXIT_UNKNOWN_ID not in others
    result = CliRunner().invoke(cli, ["wait", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"{EXIT_UNKNOWN_ID} an ID is no job or batch" in text and f"{EXIT_TIMEOUT} the --timeout" in text
