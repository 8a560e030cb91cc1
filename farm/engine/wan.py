"""The Wan adapter.

It renders canonical specs with the components of diffusers' ``WanPipeline``, through farm's
own denoising loop, with expert-phase batching.

``WanPipeline.__call__`` runs one job's whole denoising loop; a two-expert model then swaps its
experts once per job. :class:`WanAdapter` reuses the pipeline's parts (``check_inputs``,
``encode_prompt``, ``prepare_latents``, its ``VideoProcessor``) and runs its own loop over K
*compatible* jobs (same :func:`compatibility_key`): every job encodes its prompts, draws its noise
from its own CPU generator, and keeps its own latents and its own scheduler (a deep copy: UniPC
is a multistep solver that carries state between steps). The loop runs the high-noise phase
(steps with ``t >= boundary_ratio * num_train_timesteps``) for all K jobs, swaps the experts once,
runs the low-noise phase for all K, then decodes each job. Every tensor op has batch size 1 and
follows ``WanPipeline.__call__`` step for step, so each job's frames are bit-identical to
rendering it alone and to ``WanPipeline.__call__`` with the same inputs. K = 1 runs the same loop.

Deviation from ``WanPipeline.__call__`` (documented, on purpose): classifier-free guidance is
decided **per expert** — an expert whose scale is <= 1 runs one forward per step (conditional
only), one whose scale is > 1 runs two. The pipeline decides once from ``guidance_scale`` alone
(so with ``guidance_scale <= 1`` it ignores ``guidance_scale_2 > 1``, and with
``guidance_scale_2 <= 1`` it still runs the unconditional forward for the low-noise expert).
When both scales are > 1 (every official setting) or both <= 1 the two agree bit for bit.

Frames: the VAE's output goes through the pipeline's ``VideoProcessor`` exactly as
``output_type="np"`` does (float32 in [0, 1], shape F,H,W,3), then to uint8 by truncation,
``(frames * 255).astype(uint8)`` — what ``diffusers.utils.export_to_video`` does with float
frames, so the MP4 farm writes holds the frames diffusers would have written.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.wan.pipeline_wan import WanPipeline
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler

from farm.determinism import job_generator
from farm.engine.components import Components
from farm.engine.memory import oom_guard
from farm.engine.placement import Placement
from farm.engine.stepcache import StepCache
from farm.errors import IncompatibleJob, RenderCancelled
from farm.profiles import SAMPLERS, ModelProfile
from farm.seeds import is_valid_seed
from farm.spec import COMPAT_FIELDS, GUIDANCE_OFF, SEED_RANGE_TEXT, compatibility_key

#: Text tokens the prompt is padded/truncated to (WanPipeline's default, Wan2.2's ``text_len``).
MAX_SEQUENCE_LENGTH = 512
PHASE_HIGH = "high_noise"
PHASE_LOW = "low_noise"
PHASE_DENSE = "dense"
_REQUIRED_FIELDS: tuple[str, ...] = (
    *COMPAT_FIELDS,
    "prompt",
    "negative_prompt",
    "seed",
    "guidance_scale",
    "guidance_scale_2",
)

#: ``on_step(job_index, step, total_steps, phase)``, called after each denoising step of each
#: job (``step`` counts the steps done, 1..total). Return ``False`` or raise
#: :class:`RenderCancelled` to cancel that job; the other jobs of the batch go on.
StepCallback = Callable[[int, int, int, str], "bool | None"]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_jobs(
    canons: Sequence[Mapping[str, Any]], profile: ModelProfile, *, spatial_multiple: int = 1
) -> None:
    """Check K canonical specs against the model and each other.

    Raise :class:`IncompatibleJob` naming the first bad field. Torch-free and cheap: called
    before any model work.
    """
    if not canons:
        raise IncompatibleJob("batch: no jobs to render")
    for index, canon in enumerate(canons):
        where = f"job {index}" if len(canons) > 1 else "job"
        if not isinstance(canon, Mapping):
            raise IncompatibleJob(f"{where}: a canonical spec must be a mapping, got {type(canon).__name__}")
        missing = [name for name in _REQUIRED_FIELDS if name not in canon]
        if missing:
            raise IncompatibleJob(f"{missing[0]}: {where} lacks it (a canonical spec carries every field)")
        _check_one(canon, profile, spatial_multiple, where)
    first = compatibility_key(canons[0])
    for index, canon in enumerate(canons[1:], start=1):
        for (name, a), (_, b) in zip(first, compatibility_key(canon), strict=True):
            if a != b:
                raise IncompatibleJob(
                    f"{name}: jobs 0 and {index} differ ({a!r} vs {b!r}); only jobs with the same "
                    f"{', '.join(COMPAT_FIELDS)} can be rendered together"
                )


_Bad = Callable[[str, str], IncompatibleJob]


def _check_one(canon: Mapping[str, Any], p: ModelProfile, spatial_multiple: int, where: str) -> None:
    def bad(name: str, message: str) -> IncompatibleJob:
        return IncompatibleJob(f"{name}: {message} ({where}, got {canon.get(name)!r})")

    if canon["model"] != p.name:
        raise bad("model", f"the loaded model is {p.name}")
    _check_text(canon, bad)
    _check_frames(canon, p, bad)
    _check_size(canon, p, spatial_multiple, bad)
    _check_sampling(canon, bad)
    _check_experts(canon, p, bad)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_text(canon: Mapping[str, Any], bad: _Bad) -> None:
    """The prompt, the negative prompt and the seed."""
    prompt, negative = canon["prompt"], canon["negative_prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad("prompt", "must be a non-empty string")
    if negative is not None and not isinstance(negative, str):
        raise bad("negative_prompt", "must be a string")
    if not is_valid_seed(canon["seed"]):
        raise bad("seed", f"must be an integer in {SEED_RANGE_TEXT}")


def _check_frames(canon: Mapping[str, Any], p: ModelProfile, bad: _Bad) -> None:
    """``num_frames``: positive, ``temporal_multiple``k+1, at most the model's ``max_frames``."""
    frames = canon["num_frames"]
    if not _positive_int(frames):
        raise bad("num_frames", "must be a positive integer")
    if (frames - 1) % p.temporal_multiple:
        raise bad("num_frames", f"must be {p.temporal_multiple}k+1 for {p.name}")
    if frames > p.max_frames:
        raise bad("num_frames", f"must be at most {p.max_frames} for {p.name}")


def _check_size(canon: Mapping[str, Any], p: ModelProfile, spatial_multiple: int, bad: _Bad) -> None:
    """``width`` and ``height``: positive multiples of the model's and the caller's spatial multiples."""
    multiple = math.lcm(p.size_multiple, spatial_multiple)
    for name in ("width", "height"):
        value = canon[name]
        if not _positive_int(value):
            raise bad(name, "must be a positive integer")
        if value % multiple:
            raise bad(name, f"must be a multiple of {multiple} for {p.name}")


def _check_sampling(canon: Mapping[str, Any], bad: _Bad) -> None:
    """``steps``, ``sampler``, ``flow_shift``, ``guidance_scale`` and ``cache_threshold``."""
    if not _positive_int(canon["steps"]):
        raise bad("steps", "must be a positive integer")
    if canon["sampler"] not in SAMPLERS:
        raise bad("sampler", f"must be one of {', '.join(SAMPLERS)}")
    if not _number(canon["flow_shift"]) or canon["flow_shift"] <= 0:
        raise bad("flow_shift", "must be a positive number")
    if not _number(canon["guidance_scale"]) or canon["guidance_scale"] < 0:
        raise bad("guidance_scale", "must be a number >= 0")
    cache = canon["cache_threshold"]
    if cache is not None and (not _number(cache) or not 0 < cache <= 1):
        raise bad("cache_threshold", "must be None (no step caching) or a number in (0, 1]")


def _check_experts(canon: Mapping[str, Any], p: ModelProfile, bad: _Bad) -> None:
    """``guidance_scale_2`` and ``boundary_ratio``: valid for a two-expert model, None for a dense one."""
    if p.two_expert:
        g2, boundary = canon["guidance_scale_2"], canon["boundary_ratio"]
        if g2 is not None and (not _number(g2) or g2 < 0):
            raise bad("guidance_scale_2", "must be a number >= 0")
        if boundary is not None and (not _number(boundary) or not 0.0 < boundary < 1.0):
            raise bad("boundary_ratio", "must be strictly between 0 and 1")
    else:
        for name in ("guidance_scale_2", "boundary_ratio"):
            if canon[name] is not None:
                raise bad(name, f"only two-expert models take it; {p.name} is dense (one expert)")


def make_scheduler(sampler: str, flow_shift: float, base: Any | None = None) -> Any:
    """A fresh scheduler for ``sampler`` with ``flow_shift``.

    It keeps the rest of ``base``'s config (e.g. ``num_train_timesteps``, the solver order)
    when ``base`` is the same class.

    * ``unipc``: ``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
      flow_shift=...)`` (Wan's default);
    * ``euler``: ``FlowMatchEulerDiscreteScheduler(shift=...)``.
    """
    base_config = dict(base.config) if base is not None else {}
    train_steps = base_config.get("num_train_timesteps", 1000)
    if sampler == "unipc":
        if isinstance(base, UniPCMultistepScheduler):
            return UniPCMultistepScheduler.from_config(
                base.config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
            )
        return UniPCMultistepScheduler(
            num_train_timesteps=train_steps,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=flow_shift,
        )
    if sampler == "euler":
        if isinstance(base, FlowMatchEulerDiscreteScheduler):
            return FlowMatchEulerDiscreteScheduler.from_config(base.config, shift=flow_shift)
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=train_steps, shift=flow_shift)
    raise IncompatibleJob(f"sampler: unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")


@dataclass(frozen=True)
class Segment:
    """A run of consecutive steps served by one expert."""

    expert: str
    phase: str
    steps: tuple[int, ...]


def plan_segments(timesteps: torch.Tensor, boundary_timestep: float | None, *, dense: bool) -> list[Segment]:
    """Which expert serves each step, grouped into runs.

    WanPipeline's switch rule: ``t >= boundary`` → ``transformer``, else ``transformer_2``.
    Decreasing timesteps give at most two segments: high-noise then low-noise.
    """
    segments: list[Segment] = []
    for i, t in enumerate(timesteps):
        high = boundary_timestep is None or bool(t >= boundary_timestep)
        expert = "transformer" if high else "transformer_2"
        phase = PHASE_DENSE if dense else (PHASE_HIGH if high else PHASE_LOW)
        if segments and segments[-1].expert == expert:
            last = segments[-1]
            segments[-1] = Segment(expert, phase, (*last.steps, i))
        else:
            segments.append(Segment(expert, phase, (i,)))
    return segments


@dataclass
class JobOutcome:
    """One job's result from :meth:`WanAdapter.render`."""

    index: int
    canon: dict[str, Any]
    #: uint8 (F, H, W, 3), or float32 in [0, 1] with ``output_type="np"``; None when cancelled.
    frames: np.ndarray | None
    cancelled: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Job:
    index: int
    canon: dict[str, Any]
    scheduler: Any
    latents: torch.Tensor | None = None
    prompt_embeds: torch.Tensor | None = None
    negative_embeds: torch.Tensor | None = None
    guidance: dict[str, float] = field(default_factory=dict)
    steps_done: int = 0
    cancelled: bool = False
    steps: dict[str, int] = field(default_factory=lambda: {"transformer": 0, "transformer_2": 0})
    forwards: dict[str, int] = field(default_factory=lambda: {"transformer": 0, "transformer_2": 0})
    #: Forwards that ran the tail blocks (the others reused the step cache's residual).
    full: dict[str, int] = field(default_factory=lambda: {"transformer": 0, "transformer_2": 0})


class WanAdapter:
    """Renders canonical specs with one model's components (two-expert or dense).

    ``placement`` decides where the modules live; by default a :class:`Placement` on the CPU
    with ``policy`` (``"none"`` unless given). The adapter attaches the components' modules to it.
    """

    def __init__(self, components: Components, placement: Placement | None = None, policy: str | None = None):
        if placement is None:
            placement = Placement("cpu", policy or "none")
        elif policy is not None and policy != placement.policy:
            raise ValueError(f"policy {policy!r} differs from the placement's {placement.policy!r}")
        self.components = components
        self.profile = components.profile
        self.placement = placement
        self.device = placement.device
        self.dense = components.transformer_2 is None
        if self.dense == self.profile.two_expert:
            raise ValueError(f"{self.profile.name}: components do not match the profile's kind")
        self.pipe = WanPipeline(
            tokenizer=components.tokenizer,
            text_encoder=components.text_encoder,
            vae=components.vae,
            scheduler=components.scheduler,
            transformer=components.transformer,
            transformer_2=components.transformer_2,
            boundary_ratio=self.profile.boundary_ratio,
            expand_timesteps=components.expand_timesteps,
        )
        self.pipe.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]  # diffusers: untyped
        patch = components.transformer.config.patch_size
        self.spatial_multiple = math.lcm(
            self.pipe.vae_scale_factor_spatial * patch[1], self.pipe.vae_scale_factor_spatial * patch[2]
        )
        #: Forward calls per expert since the adapter was made (all jobs).
        self.forward_counts: dict[str, int] = {"transformer": 0, "transformer_2": 0}
        placement.attach(components.modules())

    # -- checks --------------------------------------------------------------------------------
    def check(self, canons: Sequence[Mapping[str, Any]]) -> None:
        """Every input check, before any model work; raises :class:`IncompatibleJob`."""
        check_jobs(canons, self.profile, spatial_multiple=self.spatial_multiple)
        for canon in canons:
            try:
                self.pipe.check_inputs(  # type: ignore[no-untyped-call]  # diffusers: untyped
                    canon["prompt"],
                    canon["negative_prompt"],
                    canon["height"],
                    canon["width"],
                    guidance_scale_2=None if self.dense else canon["guidance_scale_2"],
                )
            except ValueError as exc:
                raise IncompatibleJob(f"job: {exc}") from None

    # -- rendering -----------------------------------------------------------------------------
    def render(
        self,
        canons: Sequence[Mapping[str, Any]],
        on_step: StepCallback | None = None,
        *,
        indices: Sequence[int] | None = None,
        output_type: str = "uint8",
    ) -> list[JobOutcome]:
        """Render K compatible jobs with expert-phase batching; one outcome per job, in order.

        ``indices`` are the job numbers reported to ``on_step`` and in the outcomes (default
        0..K-1). ``output_type="np"`` returns float32 frames as ``WanPipeline(output_type="np")``.
        """
        if output_type not in ("uint8", "np"):
            raise ValueError(f"output_type must be 'uint8' or 'np', got {output_type!r}")
        self.check(canons)
        if indices is None:
            indices = list(range(len(canons)))
        if len(indices) != len(canons):
            raise ValueError("indices must match canons one to one")
        first = canons[0]
        device = self.device
        template = make_scheduler(first["sampler"], float(first["flow_shift"]), self.components.scheduler)
        jobs = [
            _Job(index=i, canon=dict(c), scheduler=copy.deepcopy(template))
            for i, c in zip(indices, canons, strict=True)
        ]
        for job in jobs:
            job.scheduler.set_timesteps(int(first["steps"]), device=device)
            job.scheduler.set_begin_index(0)
            g = float(job.canon["guidance_scale"])
            g2 = job.canon["guidance_scale_2"]
            job.guidance = {"transformer": g, "transformer_2": g if g2 is None else float(g2)}
        timesteps = jobs[0].scheduler.timesteps
        boundary = first["boundary_ratio"]
        boundary_t = None if boundary is None else float(boundary) * template.config.num_train_timesteps
        segments = plan_segments(timesteps, boundary_t, dense=self.dense)
        swaps_before = self.placement.swap_count
        log_mark = len(self.placement.log)
        seconds: dict[str, float] = {}

        start = time.perf_counter()
        with oom_guard("encode", device):
            self._encode(jobs, segments)
        with oom_guard("latents", device):
            self._prepare_latents(jobs)
        seconds["encode"] = time.perf_counter() - start

        experts = {s.expert: self.placement.modules[s.expert] for s in segments}
        with StepCache(experts, first.get("cache_threshold")) as cache:
            for segment in segments:
                start = time.perf_counter()
                with oom_guard(f"denoise:{segment.phase}", device):
                    self.placement.use(segment.expert)
                    model = self.placement.modules[segment.expert]
                    for job in jobs:
                        if not job.cancelled:
                            self._run_segment(job, model, segment, timesteps, on_step, cache)
                seconds[segment.phase] = seconds.get(segment.phase, 0.0) + time.perf_counter() - start

        start = time.perf_counter()
        outcomes = []
        with oom_guard("decode", device):
            if any(not job.cancelled for job in jobs):
                self.placement.use("vae")
            for job in jobs:
                frames = None if job.cancelled else self._decode(job, output_type)
                job.latents = job.prompt_embeds = job.negative_embeds = None
                outcomes.append(
                    JobOutcome(index=job.index, canon=job.canon, frames=frames, cancelled=job.cancelled,
                               stats=self._job_stats(job, cache))
                )
        seconds["decode"] = time.perf_counter() - start

        transfers = self.placement.log.summarize(self.placement.log.since(log_mark))
        batch = {
            "size": len(jobs),
            "swaps": self.placement.swap_count - swaps_before,
            "transfers": transfers,
            "seconds": seconds,
            "segments": [(s.phase, len(s.steps)) for s in segments],
            "policy": self.placement.policy,
        }
        for outcome in outcomes:
            outcome.stats["batch"] = batch
        return outcomes

    # -- stages --------------------------------------------------------------------------------
    def _encode(self, jobs: list[_Job], segments: list[Segment]) -> None:
        self.placement.use("text_encoder")
        experts = {s.expert for s in segments}
        dtype = self.components.transformer.dtype
        for job in jobs:
            needs_uncond = any(job.guidance[e] > GUIDANCE_OFF for e in experts)
            cond, uncond = self.pipe.encode_prompt(
                prompt=job.canon["prompt"],
                negative_prompt=job.canon["negative_prompt"],
                do_classifier_free_guidance=needs_uncond,
                num_videos_per_prompt=1,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                device=self.device,
            )
            job.prompt_embeds = cond.to(dtype)
            job.negative_embeds = None if uncond is None else uncond.to(dtype)

    def _prepare_latents(self, jobs: list[_Job]) -> None:
        channels = self.components.transformer.config.in_channels
        for job in jobs:
            c = job.canon
            job.latents = self.pipe.prepare_latents(
                1, channels, c["height"], c["width"], c["num_frames"], torch.float32, self.device,
                job_generator(int(c["seed"])),
            )

    def _run_segment(
        self, job: _Job, model: Any, segment: Segment, timesteps: torch.Tensor, on_step: StepCallback | None,
        cache: StepCache,
    ) -> None:
        total = len(timesteps)
        full_before = cache.full.get(segment.expert, 0)
        scale = job.guidance[segment.expert]
        cfg = scale > GUIDANCE_OFF
        dtype = model.dtype
        assert job.latents is not None
        latents = job.latents
        mask = torch.ones(latents.shape, dtype=torch.float32, device=self.device) if self.dense else None
        for i in segment.steps:
            t = job.scheduler.timesteps[i]  # the job's own scheduler (same values for every job)
            latent_model_input = latents.to(dtype)
            if self.components.expand_timesteps:
                assert mask is not None
                temp_ts = (mask[0][0][:, ::2, ::2] * t).flatten()
                timestep = temp_ts.unsqueeze(0).expand(latents.shape[0], -1)
            else:
                timestep = t.expand(latents.shape[0])
            cache_kwargs = {
                "step_index": i,
                "sigma": float(job.scheduler.sigmas[i]),
                "num_inference_steps": total,
            }
            with model.cache_context(cache.context(job.index, "cond"), **cache_kwargs):
                noise_pred = model(
                    hidden_states=latent_model_input,
                    timestep=timestep,
                    encoder_hidden_states=job.prompt_embeds,
                    attention_kwargs=None,
                    return_dict=False,
                )[0]
            forwards = 1
            if cfg:
                with model.cache_context(cache.context(job.index, "uncond"), **cache_kwargs):
                    noise_uncond = model(
                        hidden_states=latent_model_input,
                        timestep=timestep,
                        encoder_hidden_states=job.negative_embeds,
                        attention_kwargs=None,
                        return_dict=False,
                    )[0]
                forwards = 2
                noise_pred = noise_uncond + scale * (noise_pred - noise_uncond)
            latents = job.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            job.latents = latents
            job.steps_done += 1
            job.steps[segment.expert] += 1
            job.forwards[segment.expert] += forwards
            self.forward_counts[segment.expert] += forwards
            job.full[segment.expert] += cache.full.get(segment.expert, 0) - full_before
            full_before = cache.full.get(segment.expert, 0)
            if on_step is not None and self._cancelled(on_step, job, total, segment.phase):
                job.cancelled = True
                job.latents = job.prompt_embeds = job.negative_embeds = None
                return

    @staticmethod
    def _cancelled(on_step: StepCallback, job: _Job, total: int, phase: str) -> bool:
        try:
            return on_step(job.index, job.steps_done, total, phase) is False
        except RenderCancelled:
            return True

    def _decode(self, job: _Job, output_type: str) -> np.ndarray:
        vae = self.components.vae
        assert job.latents is not None
        latents = job.latents.to(self.device, dtype=vae.dtype)
        z_dim = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        latents_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(
            latents.device, latents.dtype
        )
        latents = latents / latents_std + mean
        video = vae.decode(latents, return_dict=False)[0]
        frames = self.pipe.video_processor.postprocess_video(video, output_type="np")[0]
        if output_type == "np":
            return np.ascontiguousarray(frames)
        return np.ascontiguousarray((frames * 255).astype(np.uint8))

    def _job_stats(self, job: _Job, cache: StepCache) -> dict[str, Any]:
        experts = ("transformer",) if self.dense else ("transformer", "transformer_2")
        stats: dict[str, Any] = {
            "steps_done": job.steps_done,
            "steps": {e: job.steps[e] for e in experts},
            "forwards": {e: job.forwards[e] for e in experts},
            "guidance": {e: job.guidance[e] for e in experts},
        }
        if cache.enabled:
            stats["cache"] = cache.stats(job.forwards, {e: job.full[e] for e in experts})
        return stats
