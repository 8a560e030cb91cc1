"""``farm results ID --format json|csv``.

One row per job of a batch (manifest order), or of one job: prompt, seed, seed strategy,
parameters, output path, file and frames sha256, timings, status, the job that answered it from
the cache.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import click

from farm.cli.common import emit_json, handle_errors, option
from farm.cli.options import client_options, open_client


def csv_cell(value: Any) -> Any:
    """Nested values as compact JSON text; None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return value


def write_csv(rows: list[dict[str, Any]], out: Any) -> None:
    """Write ``rows`` to ``out`` as CSV, one column per results field."""
    from farm.client.reports import RESULT_FIELDS

    writer = csv.DictWriter(out, fieldnames=list(RESULT_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(row.get(k)) for k in RESULT_FIELDS})


def register(group: click.Group) -> None:
    """Add ``farm results`` to ``group``."""
    @group.command("results")
    @click.argument("batch_id", metavar="ID")
    @option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", help="Output format.")
    @option("--output", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
            help="Write to this file instead of stdout.")
    @client_options
    @handle_errors()
    def results(batch_id: str, fmt: str, out_path: Path | None, database_url: str | None,
                broker_url: str | None) -> None:
        """Print the results of a batch (or of one job) as JSON or CSV."""
        with open_client(database_url, broker_url) as client:
            rows = client.results(batch_id)
        if out_path is None:
            if fmt == "json":
                emit_json(rows)
            else:
                write_csv(rows, sys.stdout)
            return
        with out_path.open("w", encoding="utf-8", newline="") as fh:
            if fmt == "json":
                json.dump(rows, fh, indent=2, sort_keys=True, ensure_ascii=False)
                fh.write("\n")
            else:
                write_csv(rows, fh)
        click.echo(f"{len(rows)} row(s) written to {out_path}", err=True)
