"""Tiny random Wan2.2-shaped pipelines built in code, for tests that need a weights directory.

:func:`build_tiny_pipeline` makes a two-expert ``WanPipeline`` (seeded, eval mode) whose
``save_pretrained`` directory is a complete Diffusers-format model; with ``flow_shift=12.0`` it is
shaped like Wan2.2-T2V-A14B's directory (boundary 0.875), so a worker given it as
``FARM_MODEL_DIR/Wan2.2-T2V-A14B-Diffusers`` serves the ``wan2.2-t2v-a14b`` profile on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farm.profiles import PROFILES


def build_tiny_pipeline(*, wide: bool = False, sampler: str = "unipc", flow_shift: float = 3.0,
                        boundary_ratio: float = 0.875) -> Any:
    """A tiny two-expert WanPipeline built in code (configs from the shared notes).

    ``wide``: the wider variant (:data:`WIDE_SUBDIR`); ``sampler``: the scheduler diffusers itself
    builds and saves (``unipc``: UniPC with flow sigmas, ``euler``: flow-match Euler).
    """
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = ["a", "cat", "dog", "runs", "in", "the", "rain", "red", "blue", "over", "city", "at", "night"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=64
    )

    def seeded(seed: int, make: Any) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = make()
        return module.eval().requires_grad_(False)

    def expert() -> Any:
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=4 if wide else 2, attention_head_dim=16 if wide else 12,
            in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=128 if wide else 32,
            num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )

    text_encoder = seeded(1, lambda: UMT5EncoderModel(UMT5Config(
        vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
    )))
    vae = seeded(0, lambda: AutoencoderKLWan(
        base_dim=32 if wide else 3, z_dim=16, dim_mult=[1, 2, 4, 4] if wide else [1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ))
    scheduler: Any
    if sampler == "unipc":
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
        )
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=flow_shift)
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
        transformer=seeded(2, expert), transformer_2=seeded(3, expert), boundary_ratio=boundary_ratio,
    )


def save_a14b_shaped(models_path: Path) -> Path:
    """A tiny pipeline saved where the ``wan2.2-t2v-a14b`` profile looks for its weights; the directory."""
    profile = PROFILES["wan2.2-t2v-a14b"]
    directory = models_path / profile.weights_subdir
    pipe = build_tiny_pipeline(flow_shift=profile.flow_shift, boundary_ratio=float(profile.boundary_ratio or 0))
    pipe.save_pretrained(directory)
    return directory
