"""``farm render PROMPT``: render one job in-process on this machine and record it in the ledger.

With nothing configured this is the embedded default: the SQLite ledger and the outputs folder in
FARM_DATA_DIR, the built-in ``tiny`` model, the CPU. The job goes through the same runner as the
farm's workers (claim, render, store, record), so its ledger row is complete. torch is imported
only once the spec has been checked.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

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
from farm.client.specs import build_spec
from farm.profiles import PROFILES, SAMPLERS
from farm.spec import RenderSpec

#: Re-exported: the spec builder moved to farm.client.specs (shared with farm submit and the API).
__all__ = ["build_spec", "copy_out", "register", "render_one"]


def register(group: click.Group) -> None:
    @group.command("render")
    @click.argument("prompt")
    @option("--seed", type=int, default=None, help="Explicit seed in [0, 2^63-1] (default: random, recorded).")
    @option("--seed-from-prompt", "seed_from_prompt_flag", is_flag=True, default=False,
            help="Derive the seed from the prompt (sha256; the same in every process).")
    @option("--salt", default="", help="Salt for --seed-from-prompt.")
    @option("--model", default=None, type=click.Choice(sorted(PROFILES)), envvar="FARM_DEFAULT_MODEL",
            help="Model profile (default: FARM_DEFAULT_MODEL, else tiny).")
    @option("--negative-prompt", default=None, help="Negative prompt (default: the model's).")
    @option("--width", type=int, default=None, help="Width in pixels (multiple of 16).")
    @option("--height", type=int, default=None, help="Height in pixels (multiple of 16).")
    @option("--frames", type=int, default=None, help="Number of frames (4k+1).")
    @option("--fps", type=int, default=None, help="Frames per second of the video.")
    @option("--steps", type=int, default=None, help="Denoising steps.")
    @option("--guidance", type=float, default=None, help="Guidance scale (high-noise expert).")
    @option("--guidance-2", type=float, default=None, help="Guidance scale of the low-noise expert.")
    @option("--boundary-ratio", type=float, default=None, help="Expert switch boundary in (0, 1).")
    @option("--flow-shift", type=float, default=None, help="Scheduler flow shift.")
    @option("--sampler", type=click.Choice(SAMPLERS), default=None, help="Sampler.")
    @option("--output-format", type=click.Choice(["mp4", "mp4+frames"]), default=None, help="Outputs to write.")
    @option("--priority", type=click.Choice(["interactive", "batch"]), default="interactive",
            help="Priority class recorded with the job.")
    @option("--allow-degrade", is_flag=True, default=False, help="May re-render smaller after an out-of-memory.")
    @option("--tag", "tags", multiple=True, help="KEY=VALUE tag (repeatable).")
    @option("--no-cache", is_flag=True, default=False,
            help="Render even if the same job (spec and weights) already has an output.")
    @option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
            help="Also copy the MP4 to this path.")
    @option("--device", envvar="FARM_DEVICE", default=None, help="Torch device (default: FARM_DEVICE, else cpu).")
    @option("--offload", envvar="FARM_OFFLOAD", default=None,
            type=click.Choice(["none", "model", "expert", "sequential"]), help="Expert offload policy.")
    @database_option()
    @json_option()
    @handle_errors()
    def render(prompt: str, seed: int | None, seed_from_prompt_flag: bool, salt: str, model: str | None,
               priority: str, allow_degrade: bool, tags: tuple[str, ...], out_path: Path | None,
               device: str | None, offload: str | None, database_url: str | None, as_json: bool,
               no_cache: bool, **values: Any) -> None:
        """Render PROMPT in-process and record it in the ledger; prints where the video is."""
        spec = build_spec(
            prompt, seed=seed, seed_from_prompt_flag=seed_from_prompt_flag, salt=salt, model=model,
            priority=priority, allow_degrade=allow_degrade, tags=tags, values=values,
        )
        settings = settings_with(database_url=database_url, device=device, offload=offload)
        summary = render_one(spec, settings, no_cache=no_cache)
        if out_path is not None and summary["status"] == "succeeded":
            copy_out(Path(summary["video"]), out_path)
            summary["copied_to"] = str(out_path)
        if as_json:
            emit_json(summary)
        else:
            _print_summary(summary)
        if summary["status"] != "succeeded":
            sys.exit(EXIT_FAILED)


def render_one(spec: RenderSpec, settings: Any, *, no_cache: bool = False) -> dict[str, Any]:
    """Record ``spec`` as a job, run it through the runner on this machine, return a summary."""
    from farm.engine.render import Engine
    from farm.ledger import Ledger, NewJob
    from farm.runner import JobRunner, worker_identity
    from farm.store import OutputStore

    store = OutputStore(settings.outputs_path)
    with Ledger.from_settings(settings) as ledger:
        new_job = NewJob.from_spec(spec, max_attempts=settings.max_attempts, no_cache=no_cache)
        job_id = ledger.add_job(new_job, output_ok=store.vouches)
        runner = JobRunner(
            ledger=ledger,
            engine=Engine.from_settings(settings),
            store=store,
            worker_host=worker_identity(settings.device),
            worker_device=settings.device,
            lease_s=settings.lease_s,
            heartbeat_s=settings.heartbeat_s,
        )
        outcome = runner.run([job_id])[0]
        job = ledger.get_job(job_id)
    video = store.locate(job.output_uri)
    timings = job.timings or {}
    stats = timings.get("stats", {})
    return {
        "job_id": job.id,
        "status": job.status.value,
        "outcome": outcome.outcome,
        "error": job.error_message,
        "error_type": job.error_type,
        "job_key": job.job_key,
        "model": job.model_name,
        "seed": job.seed,
        "seed_strategy": job.seed_strategy,
        "frames_sha256": job.frames_sha256,
        "file_sha256": job.file_sha256,
        "video": str(video) if video else None,
        "poster": str(store.poster_of(job.output_uri)) if video else None,
        "cache_hit": job.cache_of_job_id is not None,
        "render_s": timings.get("render_s"),
        "load_s": timings.get("load_s"),
        "encode_s": timings.get("encode_s"),
        "swaps": (stats.get("batch") or {}).get("swaps"),
        "cache_of_job_id": job.cache_of_job_id,
        "ledger": settings.ledger_url if settings.embedded else "(configured database)",
    }


def copy_out(video: Path, out_path: Path) -> None:
    """Copy the stored MP4 to a path the user chose (atomically: temp file + rename)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    shutil.copyfile(video, tmp)
    tmp.replace(out_path)


def _print_summary(s: dict[str, Any]) -> None:
    if s["status"] != "succeeded":
        click.echo(f"job {s['job_id']} {s['status']}: {s['error_type']}: {s['error']}", err=True)
        return
    click.echo(f"job      {s['job_id']}  ({s['model']}, seed {s['seed']} [{s['seed_strategy']}])")
    if s.get("cache_of_job_id"):
        click.echo(f"cache    hit: answered from job {s['cache_of_job_id']} without rendering (same spec and "
                   "weights, its file checked; --no-cache renders again)")
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
