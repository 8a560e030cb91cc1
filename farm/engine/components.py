"""The loaded parts of one model, whatever its source (built in code, or a local directory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from farm.profiles import ModelProfile


@dataclass
class Components:
    """Everything the adapter needs to render with one model.

    ``transformer`` is the high-noise expert (early steps), ``transformer_2`` the low-noise expert
    (late steps, ``None`` for a dense model). All modules are in eval mode, on the CPU, with
    ``requires_grad`` off; the placement layer moves them to the device.
    """

    profile: ModelProfile
    tokenizer: Any
    text_encoder: Any
    vae: Any
    scheduler: Any
    transformer: Any
    transformer_2: Any | None
    #: Dense TI2V-style models use per-token timesteps (diffusers' ``expand_timesteps``).
    expand_timesteps: bool
    #: Content-based fingerprint of the weights (sha256 hex), recorded with every job.
    weights_fingerprint: str
    #: Torch dtype name the experts compute in ("float32", "bfloat16").
    dtype: str = "float32"
    #: The render settings the model directory carries (``boundary_ratio``, ``flow_shift``), checked
    #: against the profile at load (empty for a model built in code).
    directory_settings: dict[str, float] = field(default_factory=dict)

    def modules(self) -> dict[str, Any]:
        """The torch modules by name (the placement layer's unit of transfer)."""
        out = {"text_encoder": self.text_encoder, "vae": self.vae, "transformer": self.transformer}
        if self.transformer_2 is not None:
            out["transformer_2"] = self.transformer_2
        return out
