"""Named model profiles: what each model accepts and its official defaults.

Torch-free: producers validate specs against these. The render engine reads the same profiles to
know where the weights live and how to load them (see ``farm.engine``).

Official Wan2.2 settings (Wan-Video/Wan2.2 configs, see shared notes):

=============  ========  ==========  =====  ==========================  ============
model          boundary  flow shift  steps  guidance (high, low expert)  frames / fps
=============  ========  ==========  =====  ==========================  ============
T2V-A14B       0.875     12.0        40     (4.0, 3.0)                   81 / 16
TI2V-5B        —         5.0         50     5.0                          121 / 24
=============  ========  ==========  =====  ==========================  ============
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from farm.kinds import Sampler, values

#: Wan2.2's official default negative prompt (from the Wan2.2 configs).
# The official prompt is Chinese, with full-width punctuation on purpose.
WAN_DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"  # noqa: RUF001
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"  # noqa: RUF001
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"  # noqa: RUF001
)

Kind = Literal["two-expert", "dense"]
Source = Literal["builtin", "directory"]


@dataclass(frozen=True)
class ModelProfile:
    """Everything farm knows about one model before loading it."""

    name: str
    kind: Kind
    #: ``builtin``: constructed in code (tiny models); ``directory``: a local Diffusers-format
    #: directory ``FARM_MODEL_DIR/<weights_subdir>``.
    source: Source
    weights_subdir: str
    dtype: str
    # defaults (the official settings)
    steps: int
    guidance_scale: float
    guidance_scale_2: float | None
    boundary_ratio: float | None
    flow_shift: float
    num_frames: int
    fps: int
    width: int
    height: int
    sampler: str = "unipc"
    negative_prompt: str = ""
    # what the model accepts
    max_frames: int = 241
    #: Spatial multiple width/height must respect (VAE downsampling x patch size).
    size_multiple: int = 16
    #: Frames must be ``temporal_multiple * k + 1``.
    temporal_multiple: int = 4
    description: str = ""
    #: Files a Diffusers-format directory must contain (relative paths).
    required_files: tuple[str, ...] = field(default_factory=tuple)
    # the ``draft`` speed preset: fewer steps, and step caching (First Block Cache) at this threshold
    draft_steps: int = 0
    draft_cache_threshold: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.draft_steps <= self.steps:
            object.__setattr__(self, "draft_steps", max(1, self.steps // 2))

    @property
    def two_expert(self) -> bool:
        """True for a two-expert model (high-noise and low-noise transformers)."""
        return self.kind == "two-expert"


_A14B_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer",
    "transformer/config.json",
    "transformer_2/config.json",
    "vae/config.json",
)
_DENSE_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer",
    "transformer/config.json",
    "vae/config.json",
)

PROFILES: dict[str, ModelProfile] = {
    p.name: p
    for p in (
        ModelProfile(
            name="wan2.2-t2v-a14b",
            kind="two-expert",
            source="directory",
            weights_subdir="Wan2.2-T2V-A14B-Diffusers",
            dtype="bfloat16",
            steps=40,
            guidance_scale=4.0,
            guidance_scale_2=3.0,
            boundary_ratio=0.875,
            flow_shift=12.0,
            num_frames=81,
            fps=16,
            width=832,
            height=480,
            negative_prompt=WAN_DEFAULT_NEGATIVE_PROMPT,
            description="Wan2.2 text-to-video, two 14B experts (high-noise, low-noise)",
            required_files=_A14B_FILES,
            draft_steps=20,
            draft_cache_threshold=0.1,
        ),
        ModelProfile(
            name="wan2.2-ti2v-5b",
            kind="dense",
            source="directory",
            weights_subdir="Wan2.2-TI2V-5B-Diffusers",
            dtype="bfloat16",
            steps=50,
            guidance_scale=5.0,
            guidance_scale_2=None,
            boundary_ratio=None,
            flow_shift=5.0,
            num_frames=121,
            fps=24,
            width=1280,
            height=704,
            size_multiple=32,
            negative_prompt=WAN_DEFAULT_NEGATIVE_PROMPT,
            description="Wan2.2 text/image-to-video 5B, one dense expert (expand_timesteps)",
            required_files=_DENSE_FILES,
            draft_steps=25,
            draft_cache_threshold=0.1,
        ),
        ModelProfile(
            name="tiny",
            kind="two-expert",
            source="builtin",
            weights_subdir="",
            dtype="float32",
            steps=8,
            guidance_scale=4.0,
            guidance_scale_2=3.0,
            boundary_ratio=0.875,
            flow_shift=3.0,
            num_frames=9,
            fps=8,
            width=32,
            height=32,
            max_frames=33,
            description="built-in tiny random two-expert model (tests, embedded default)",
            draft_steps=4,
            draft_cache_threshold=0.2,
        ),
        ModelProfile(
            name="tiny-dense",
            kind="dense",
            source="builtin",
            weights_subdir="",
            dtype="float32",
            steps=8,
            guidance_scale=5.0,
            guidance_scale_2=None,
            boundary_ratio=None,
            flow_shift=5.0,
            num_frames=9,
            fps=8,
            width=32,
            height=32,
            max_frames=33,
            size_multiple=32,
            description="built-in tiny random dense model shaped like TI2V-5B",
            draft_steps=4,
            draft_cache_threshold=0.2,
        ),
    )
}

SAMPLERS: tuple[str, ...] = values(Sampler)


def get_profile(name: str) -> ModelProfile:
    """The profile called ``name``; raises :class:`farm.errors.UnknownModel`."""
    try:
        return PROFILES[name]
    except KeyError:
        from farm.errors import UnknownModel

        known = ", ".join(sorted(PROFILES))
        raise UnknownModel.one("model", "known_model", f"unknown model {name!r}; known: {known}") from None
