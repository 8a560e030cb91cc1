"""``farm validate MANIFEST``: a dry run of a batch manifest.

Loads the manifest, expands it into jobs, validates every job, and prints the counts, the
manifest digest and the first problems. Touches no database, broker or output folder. Exit 0 when
the manifest is valid, 2 when it has any problem.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from farm.cli.common import EXIT_BAD_INPUT, EXIT_OK, emit_json, json_option, option

if TYPE_CHECKING:
    from farm.manifest import ExpandedBatch

#: Problems collected (and shown) before validation stops.
DEFAULT_MAX_ERRORS = 20


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "-"


def _print_human(batch: ExpandedBatch, show_jobs: bool) -> None:
    s = batch.stats
    status = (
        "valid"
        if batch.ok
        else f"INVALID ({len(batch.problems)}{'+' if batch.problems_truncated else ''} problems)"
    )
    click.echo(f"{batch.source}: {status}")
    click.echo(f"  name        {batch.name or '-'}")
    click.echo(f"  digest      {batch.digest}")
    click.echo(
        f"  jobs        {s.jobs} from {s.items} items: "
        f"{s.prompts} prompts, {s.seeds} seeds, {s.variants} variants"
    )
    click.echo(f"  models      {_counts_line(s.models)}")
    click.echo(f"  strategies  {_counts_line(s.seed_strategies)}")
    if s.seed_strategies.get("random"):
        click.echo("  note        random seeds are drawn again on every validate; submitting records them")
    if show_jobs:
        click.echo("  item  seed                 strategy  job key       prompt")
        for job in batch.jobs:
            spec = job.spec
            click.echo(
                f"  {job.item:>4}  {spec.seed:<19}  {spec.seed_strategy:<8}  "
                f"{job.job_key[:12]}  {spec.prompt[:60]}"
            )
    if batch.problems:
        more = " (more not shown: raise --max-errors)" if batch.problems_truncated else ""
        click.echo(f"problems{more}:", err=True)
        for problem in batch.problems:
            click.echo(f"  {problem}", err=True)


def _json_payload(batch: ExpandedBatch, show_jobs: bool) -> dict[str, Any]:
    payload = batch.summary()
    if show_jobs:
        payload["jobs"] = [
            {"item": j.item, "job_key": j.job_key, "spec": j.spec.canonical()} for j in batch.jobs
        ]
    return payload


def register(group: click.Group) -> None:
    """Add ``farm validate`` to ``group``."""
    @group.command("validate")
    @click.argument("manifest", type=click.Path(dir_okay=False, path_type=str))
    @option(
        "--max-errors",
        type=click.IntRange(1, 10_000),
        default=DEFAULT_MAX_ERRORS,
        help="Stop collecting problems after this many.",
    )
    @option(
        "--show-jobs", is_flag=True, default=False, help="Also list every job (seed, strategy, key, prompt)."
    )
    @json_option()
    def validate(manifest: str, max_errors: int, show_jobs: bool, as_json: bool) -> None:
        """Dry-run MANIFEST (.yaml/.yml, .jsonl or .csv): expand and validate every job.

        Prints the job counts, the manifest digest and the first problems, each with its file,
        item, line and field. Touches no database or broker. Exit 0 when valid, 2 otherwise.
        """
        from farm.errors import ManifestError
        from farm.manifest import expand, load_manifest

        try:
            batch = expand(load_manifest(manifest), max_problems=max_errors, raise_on_problems=False)
        except ManifestError as exc:  # the file could not be read at all
            if as_json:
                emit_json(
                    {"source": manifest, "valid": False, "problems": [p.as_dict() for p in exc.problems]}
                )
            else:
                click.echo(f"{manifest}: INVALID", err=True)
                for problem in exc.problems:
                    click.echo(f"  {problem}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        if as_json:
            emit_json(_json_payload(batch, show_jobs))
        else:
            _print_human(batch, show_jobs)
        sys.exit(EXIT_OK if batch.ok else EXIT_BAD_INPUT)
