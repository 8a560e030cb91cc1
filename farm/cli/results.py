"""``farm results ID --format json|csv|xlsx|html|sheet``.

* ``json`` (default): one object per job of a batch (manifest order), or of one job: prompt, seed,
  seed strategy, parameters, output path, file and frames sha256, timings, status, the job that
  answered it from the cache. For machines; unchanged.
* ``csv`` / ``xlsx``: the same rows for spreadsheets (:mod:`farm.client.export`): parameters,
  tags and timings in columns of their own, ``poster`` and ``video`` columns (file paths, presigned
  URLs on s3, or with ``--base-url`` the API's download URLs), ids, seeds and hashes kept as text
  so a spreadsheet never turns them into floats. ``xlsx`` needs ``--output``.
* ``html`` / ``sheet``: a batch's self-contained HTML report or its contact sheet PNG
  (:mod:`farm.client.contact_sheet`); a batch id only. ``sheet`` needs ``--output``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from farm.cli.common import handle_errors, option
from farm.cli.options import client_options, open_client
from farm.errors import InvalidInput, Problem

if TYPE_CHECKING:
    from farm.client import Client

FORMATS: tuple[str, ...] = ("json", "csv", "xlsx", "html", "sheet")
#: Formats written as bytes: to a file only.
BINARY_FORMATS = frozenset({"xlsx", "sheet"})
#: Formats with poster and video columns (``--base-url``).
TABLE_FORMATS = frozenset({"csv", "xlsx"})


def check_options(fmt: str, out_path: Path | None, base_url: str | None) -> None:
    """The combination of options makes sense; else :class:`InvalidInput` naming each option."""
    from farm.client.export import check_base_url

    problems = []
    if fmt in BINARY_FORMATS and out_path is None:
        problems.append(Problem("output", "required_for_format",
                                f"--format {fmt} writes a binary file: give --output FILE"))
    if base_url is not None:
        if fmt not in TABLE_FORMATS:
            problems.append(Problem("base_url", "table_formats_only",
                                    f"--base-url sets the poster and video columns of --format csv or xlsx, "
                                    f"not of --format {fmt}"))
        try:
            check_base_url(base_url)
        except InvalidInput as exc:
            problems.extend(exc.problems)
    if problems:
        raise InvalidInput(problems)


def _render(client: Client, batch_id: str, fmt: str, base_url: str | None, to_file: bool) -> tuple[str | bytes, str]:
    """The output in ``fmt``, and what it holds (for the message on stderr)."""
    from farm.client import contact_sheet, export

    if fmt == "sheet":
        return contact_sheet.contact_sheet_png(client, batch_id), "contact sheet"
    if fmt == "html":
        return contact_sheet.html_report(client, batch_id), "HTML report"
    rows = client.results(batch_id)
    what = f"{len(rows)} row(s)"
    if fmt == "json":
        return json.dumps(rows, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n", what
    table = export.export_rows(rows, client.store, base_url)
    if fmt == "xlsx":
        binary = io.BytesIO()
        export.write_xlsx(table, binary)
        return binary.getvalue(), what
    text = io.StringIO(newline="")
    export.write_csv(table, text, bom=to_file)  # a file gets the BOM Excel needs to read UTF-8
    return text.getvalue(), what


def register(group: click.Group) -> None:
    """Add ``farm results`` to ``group``."""
    @group.command("results")
    @click.argument("batch_id", metavar="ID")
    @option("--format", "fmt", type=click.Choice(list(FORMATS)), default="json",
            help="json (machines), csv or xlsx (spreadsheets), html (a batch's report), sheet (a batch's "
                 "contact sheet, PNG).")
    @option("--output", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
            help="Write to this file instead of stdout (required for xlsx and sheet).")
    @option("--base-url", "base_url", default=None,
            help="csv/xlsx: the poster and video columns link the API's downloads under this URL "
                 "(e.g. https://farm.example:8000) instead of the output store.")
    @client_options
    @handle_errors()
    def results(batch_id: str, fmt: str, out_path: Path | None, base_url: str | None, database_url: str | None,
                broker_url: str | None) -> None:
        """Print (or write) the results of a batch or of one job: JSON, CSV, xlsx, an HTML report, a contact sheet."""
        check_options(fmt, out_path, base_url)
        with open_client(database_url, broker_url) as client:
            content, what = _render(client, batch_id, fmt, base_url, to_file=out_path is not None)
        if out_path is None:
            click.echo(content, nl=False)
        elif isinstance(content, bytes):
            out_path.write_bytes(content)
        else:
            out_path.write_text(content, encoding="utf-8", newline="")
        if out_path is not None:
            click.echo(f"{what} written to {out_path}", err=True)
