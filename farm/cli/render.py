"""``farm render PROMPT``: render one job in-process on this machine and record it in the ledger.

With nothing configured this is the embedded default: the SQLite ledger and the outputs folder in
FARM_DATA_DIR, the built-in ``tiny`` model, the CPU. The job goes through the same runner as the
farm's workers (claim, render, store, record), so its ledger row is complete. torch is imported
only once the spec has been checked.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from farm.cli.common import (
    EXIT_FAILED,
    database_option,
    emit_json,
    handle_errors,
    json_option,
    option,
    settings_with,
)
from farm.cli.options import priority_option, seed_options, spec_options
from farm.client.specs import build_spec
from farm.kinds import OffloadPolicy
from farm.kinds import values as choices
from farm.store import StoreBackend, open_store

if TYPE_CHECKING:
    from farm.ledger import JobRecord
    from farm.settings import Settings

__all__ = ["copy_out", "register", "summary_of"]


def register(group: click.Group) -> None:
    """Add ``farm render`` to ``group``."""
    @group.command("render")
    @click.argument("prompt")
    @seed_options
    @spec_options
    @priority_option("interactive", "Priority class recorded with the job.")
    @option("--no-cache", is_flag=True, default=False,
            help="Render even if the same job (spec and weights) already has an output.")
    @option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
            help="Also copy the MP4 to this path.")
    @option("--device", envvar="FARM_DEVICE", default=None, help="Torch device (default: FARM_DEVICE, else cpu).")
    @option("--offload", envvar="FARM_OFFLOAD", default=None, type=click.Choice(choices(OffloadPolicy)),
            help="Expert offload policy.")
    @database_option()
    @json_option()
    @handle_errors()
    def render(prompt: str, seed: int | None, seed_from_prompt_flag: bool, salt: str, model: str | None,
               priority: str, allow_degrade: bool, tags: tuple[str, ...], out_path: Path | None,
               device: str | None, offload: str | None, database_url: str | None, as_json: bool,
               no_cache: bool, **values: Any) -> None:
        """Render PROMPT in-process and record it in the ledger; prints where the video is."""
        from farm.worker.main import render_locally

        spec = build_spec(
            prompt, seed=seed, seed_from_prompt_flag=seed_from_prompt_flag, salt=salt, model=model,
            priority=priority, allow_degrade=allow_degrade, tags=tags, values=values,
        )
        settings = settings_with(database_url=database_url, device=device, offload=offload)
        done = render_locally(spec, settings, no_cache=no_cache)
        store = open_store(settings)
        summary = summary_of(done.job, done.outcome.outcome.value, store, settings)
        if out_path is not None and summary["status"] == "succeeded":
            copy_out(store, done.job.output_uri, out_path)
            summary["copied_to"] = str(out_path)
        if as_json:
            emit_json(summary)
        else:
            _print_summary(summary)
        if summary["status"] != "succeeded":
            sys.exit(EXIT_FAILED)


def summary_of(job: JobRecord, outcome: str, store: StoreBackend, settings: Settings) -> dict[str, Any]:
    """What ``farm render`` reports of its job (``--json`` prints it as is).

    ``video`` and ``poster``: their paths in a file store, their ``s3://`` URIs in an s3 store.
    """
    video = store.where(job.output_uri)
    timings = job.timings or {}
    stats = timings.get("stats", {})
    return {
        "job_id": job.id,
        "status": job.status.value,
        "outcome": outcome,
        "error": job.error_message,
        "error_type": job.error_type,
        "job_key": job.job_key,
        "model": job.model_name,
        "seed": job.seed,
        "seed_strategy": job.seed_strategy,
        "frames_sha256": job.frames_sha256,
        "file_sha256": job.file_sha256,
        "video": video,
        "poster": store.where(job.output_uri, poster=True) if video else None,
        "cache_hit": job.cache_of_job_id is not None,
        "render_s": timings.get("render_s"),
        "load_s": timings.get("load_s"),
        "encode_s": timings.get("encode_s"),
        "swaps": (stats.get("batch") or {}).get("swaps"),
        "cache_of_job_id": job.cache_of_job_id,
        "degraded_reason": job.degraded_reason,
        "ledger": settings.ledger_url if settings.embedded else "(configured database)",
    }


def copy_out(store: StoreBackend, uri: str | None, out_path: Path) -> None:
    """Copy the stored MP4 to a path the user chose (atomically: temp file + rename; downloaded from s3)."""
    store.copy_to(uri, out_path)


def _print_summary(s: dict[str, Any]) -> None:
    if s["status"] != "succeeded":
        click.echo(f"job {s['job_id']} {s['status']}: {s['error_type']}: {s['error']}", err=True)
        return
    click.echo(f"job      {s['job_id']}  ({s['model']}, seed {s['seed']} [{s['seed_strategy']}])")
    if s.get("cache_of_job_id"):
        click.echo(f"cache    hit: answered from job {s['cache_of_job_id']} without rendering (same spec and "
                   "weights, its file checked; --no-cache renders again)")
    if s.get("degraded_reason"):
        click.echo(f"degraded {s['degraded_reason']}")
    click.echo(f"video    {s['video']}")
    click.echo(f"poster   {s['poster']}")
    if s.get("copied_to"):
        click.echo(f"copied   {s['copied_to']}")
    click.echo(f"frames   sha256 {s['frames_sha256']}")
    click.echo(f"file     sha256 {s['file_sha256']}")
    if s.get("cache_of_job_id"):
        return
    render_s = s["render_s"] or 0.0
    click.echo(f"timing   render {render_s:.2f} s, load {s['load_s'] or 0:.2f} s, encode {s['encode_s'] or 0:.2f} s"
               f", expert swaps {s['swaps']}")
