"""Fixtures for the engine I/O tests: a tiny Diffusers-format model directory built in code."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from farm.profiles import PROFILES, ModelProfile

TINY_SUBDIR = "Tiny-T2V-Diffusers"
#: Files written by the fixture get this age, so the fingerprint cache may trust them.
OLD_SECONDS = 3600


def tiny_profile(subdir: str = TINY_SUBDIR, *, dense: bool = False) -> ModelProfile:
    """The built-in tiny profile, pointed at a directory (like the real A14B / TI2V profiles)."""
    if dense:
        return dataclasses.replace(
            PROFILES["tiny-dense"], source="directory", weights_subdir=subdir,
            required_files=PROFILES["wan2.2-ti2v-5b"].required_files,
        )
    return dataclasses.replace(
        PROFILES["tiny"], source="directory", weights_subdir=subdir,
        required_files=PROFILES["wan2.2-t2v-a14b"].required_files,
    )


#: The "wide" variant: a VAE much wider than the tiny one (base_dim 32, dim_mult 1,2,4,4: at
#: 128x128 and 17 frames its CPU conv3d gives other floats with 1 and 2 threads) and wider experts.
WIDE_SUBDIR = "Wide-T2V-Diffusers"


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


def age_tree(root: Path, seconds: float = OLD_SECONDS) -> None:
    """Set every file's mtime ``seconds`` into the past."""
    past = time.time() - seconds
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            os.utime(Path(dirpath) / name, (past, past))


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """(directory, pipeline): the tiny pipeline and its save_pretrained directory (read only: copy it)."""
    root = tmp_path_factory.mktemp("tiny-src")
    pipe = build_tiny_pipeline()
    directory = root / TINY_SUBDIR
    pipe.save_pretrained(directory)
    age_tree(directory)
    return directory, pipe


@pytest.fixture
def models_path(tmp_path: Path, tiny_source: tuple[Path, Any]) -> Path:
    """A fresh models directory holding a private copy of the tiny model (mtimes kept, old)."""
    src, _ = tiny_source
    models = tmp_path / "models"
    shutil.copytree(src, models / TINY_SUBDIR, copy_function=shutil.copy2)
    return models


def save_pipeline(root: Path, subdir: str, **options: Any) -> Path:
    """:func:`build_tiny_pipeline` with ``options``, saved with ``save_pretrained`` under ``root/subdir``."""
    directory = root / subdir
    build_tiny_pipeline(**options).save_pretrained(directory)
    age_tree(directory)
    return directory


@pytest.fixture(scope="session")
def wide_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding the wide model (:data:`WIDE_SUBDIR`; read only)."""
    root = tmp_path_factory.mktemp("wide-models")
    save_pipeline(root, WIDE_SUBDIR, wide=True)
    return root
