"""The built-in tiny models, constructed in code: no download, no files, any machine.

* ``tiny`` — shaped like Wan2.2 T2V-A14B: two differently seeded tiny ``WanTransformer3DModel``
  experts (high-noise ``transformer``, low-noise ``transformer_2``), a tiny ``AutoencoderKLWan``
  (z_dim 16), a tiny ``UMT5EncoderModel`` (d_model 32 == the experts' text_dim) and a tokenizer
  built with the ``tokenizers`` library.
* ``tiny-dense`` — shaped like Wan2.2 TI2V-5B: one expert with 48 in/out channels, a residual VAE
  with z_dim 48, patch size 2 and a spatial factor of 16; the pipeline runs with
  ``expand_timesteps=True``.

Every module is built under a forked torch RNG seeded with a fixed per-module seed (the global
RNG is left untouched), put in eval mode with ``requires_grad`` off. The weights fingerprint is a
sha256 over the modules' state dicts (names, dtypes, shapes, raw bytes, in sorted order), their
diffusers configs and the tokenizer's vocabulary: content-based, so the same code gives the same
fingerprint in every process. :func:`build_builtin` builds each model once per process.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from farm.engine.components import Components
from farm.profiles import ModelProfile, get_profile

#: Text width shared by the tiny text encoder (d_model) and the experts (text_dim).
TEXT_DIM = 32
#: Longest token sequence the tiny tokenizer reports (the pipeline pads to its own length).
TOKENIZER_MAX_LENGTH = 512

# Per-module construction seeds. The two experts must differ, so they get different seeds.
SEED_VAE = 0
SEED_TEXT_ENCODER = 1
SEED_TRANSFORMER = 2
SEED_TRANSFORMER_2 = 3

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
_SPECIALS = (PAD, EOS, UNK)  # ids 0, 1, 2, like T5's tokenizer
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()&/+%*#@$_=[]<>"
#: A fixed word list; anything else falls back to characters (WordPiece ``##`` continuation pieces),
#: and a word with a character outside the list becomes ``<unk>``.
_WORD_TEXT = (
    "a an the and or of in on at to with from by for over under into through near behind above below "
    "is are was were be being it its this that these those there here while as "
    "cat cats dog dogs bird birds fish horse monkey robot person people man woman child children "
    "car train boat ship plane city street forest river ocean sea beach mountain sky cloud clouds sun moon "
    "star stars rain snow fire water light night day morning evening sunset sunrise "
    "red orange yellow green blue purple black white gray grey golden silver bright dark "
    "big small tall short old young new slow fast happy sad calm quiet loud "
    "running walking flying dancing swimming jumping sitting standing playing eating cooking baking "
    "looking smiling laughing driving riding reading singing "
    "camera shot close up wide view aerial slow motion cinematic video scene style quality detailed "
    "realistic animation painting photo portrait landscape background foreground "
    "kitchen room house garden park field road bridge tower window door table chair cake flour spoon"
)
_WORDS = tuple(_WORD_TEXT.split())


def _vocab() -> dict[str, int]:
    tokens: list[str] = list(_SPECIALS)
    seen = set(tokens)
    for tok in (*_WORDS, *_CHARS, *(f"##{c}" for c in _CHARS)):
        if tok not in seen:
            seen.add(tok)
            tokens.append(tok)
    return {tok: i for i, tok in enumerate(tokens)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer over a fixed vocabulary (words, then single characters as fallback).

    Lower-cased, with ``</s>`` appended by the post-processor, ``<pad>`` = 0 and ``<unk>``.
    """
    vocab = _vocab()
    tok = Tokenizer(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, vocab[EOS])]
    )
    # transformers 5: PreTrainedTokenizerFast is TokenizersBackend, whose __init__ has no type hints
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=TOKENIZER_MAX_LENGTH,
        padding_side="right",
    )


M = TypeVar("M", bound=torch.nn.Module)


def seeded_module(seed: int, make: Callable[[], M]) -> M:
    """Build a module from a fixed seed without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = make()
    module.eval()
    module.requires_grad_(False)
    return module


def _transformer(channels: int) -> WanTransformer3DModel:
    model: WanTransformer3DModel = WanTransformer3DModel(  # typed here: @register_to_config makes it Any
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=channels,
        out_channels=channels,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    return model


def _text_encoder(vocab_size: int) -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        is_encoder_decoder=False,
        use_cache=False,
    )
    return UMT5EncoderModel(config)


def _vae_two_expert() -> AutoencoderKLWan:
    # latents_mean/std: the library defaults (Wan2.1's VAE statistics, 16 channels).
    vae: AutoencoderKLWan = AutoencoderKLWan(  # typed here: @register_to_config makes it Any
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    return vae


def _dense_latent_stats() -> tuple[list[float], list[float]]:
    """Fixed, non-trivial per-channel statistics for the 48-channel dense VAE.

    Non-trivial so that the un-normalisation before decoding is exercised, not an
    identity.
    """
    mean = [round(0.05 * ((i % 7) - 3), 4) for i in range(48)]
    std = [round(1.0 + 0.1 * (i % 5), 4) for i in range(48)]
    return mean, std


def _vae_dense() -> AutoencoderKLWan:
    mean, std = _dense_latent_stats()
    vae: AutoencoderKLWan = AutoencoderKLWan(  # typed here: @register_to_config makes it Any
        base_dim=3,
        z_dim=48,
        in_channels=12,
        out_channels=12,
        is_residual=True,
        patch_size=2,
        latents_mean=mean,
        latents_std=std,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        temperal_downsample=[False, True, True],
    )
    return vae


def _scheduler(profile: ModelProfile) -> UniPCMultistepScheduler:
    """The model's base scheduler (what a Diffusers directory would ship).

    The adapter builds each job's own scheduler from this config with the job's sampler and flow
    shift.
    """
    scheduler: UniPCMultistepScheduler = UniPCMultistepScheduler(  # typed here: @register_to_config makes it Any
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=profile.flow_shift
    )
    return scheduler


# -- fingerprint -------------------------------------------------------------------------------


def _config_of(module: Any) -> dict[str, Any] | None:
    config = getattr(module, "config", None)
    if config is None or not isinstance(config, Mapping):  # diffusers' FrozenDict is a Mapping
        return None
    return {k: v for k, v in config.items() if not str(k).startswith("_")}


def fingerprint_components(modules: Mapping[str, Any], tokenizer: Any) -> str:
    """sha256 over every module's state dict, the diffusers model configs and the tokenizer's vocabulary.

    State dicts: parameter names, dtypes, shapes and raw bytes, sorted by name. The configs carry
    e.g. the VAE's latent statistics, which are not in a state dict. The vocabulary is sorted.
    Independent of hash seeds and thread counts.
    """
    h = hashlib.sha256(b"farm.weights/1\0")
    for name in sorted(modules):
        module = modules[name]
        if module is None:
            continue
        h.update(f"module:{name}:{type(module).__name__}\0".encode())
        config = _config_of(module)
        if config is not None:
            h.update(json.dumps(config, sort_keys=True, default=str).encode())
            h.update(b"\0")
        state = module.state_dict()
        for key in sorted(state):
            tensor = state[key].detach().to("cpu").contiguous()
            h.update(f"{key}:{str(tensor.dtype).removeprefix('torch.')}:{tuple(tensor.shape)}\0".encode())
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    if tokenizer is not None:
        vocab = sorted(tokenizer.get_vocab().items())
        h.update(b"vocab\0")
        h.update(json.dumps(vocab, ensure_ascii=False).encode())
    return h.hexdigest()


# -- building ----------------------------------------------------------------------------------

_CACHE: dict[str, Components] = {}
_LOCK = threading.Lock()


def _build(profile: ModelProfile) -> Components:
    tokenizer = build_tokenizer()
    text_encoder = seeded_module(SEED_TEXT_ENCODER, lambda: _text_encoder(len(tokenizer)))
    if profile.two_expert:
        vae = seeded_module(SEED_VAE, _vae_two_expert)
        transformer = seeded_module(SEED_TRANSFORMER, lambda: _transformer(16))
        transformer_2: WanTransformer3DModel | None = seeded_module(SEED_TRANSFORMER_2, lambda: _transformer(16))
    else:
        vae = seeded_module(SEED_VAE, _vae_dense)
        transformer = seeded_module(SEED_TRANSFORMER, lambda: _transformer(48))
        transformer_2 = None
    modules = {
        "text_encoder": text_encoder, "vae": vae, "transformer": transformer, "transformer_2": transformer_2
    }
    return Components(
        profile=profile,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=_scheduler(profile),
        transformer=transformer,
        transformer_2=transformer_2,
        expand_timesteps=not profile.two_expert,
        weights_fingerprint=fingerprint_components(modules, tokenizer),
        dtype="float32",
    )


def build_builtin(profile: ModelProfile | str) -> Components:
    """The built-in model for ``profile`` (``tiny`` or ``tiny-dense``), built once per process.

    The returned :class:`Components` is shared by every caller in the process; its modules are on
    the CPU in eval mode (the placement layer moves them).
    """
    if isinstance(profile, str):
        profile = get_profile(profile)
    if profile.source != "builtin" or profile.name not in ("tiny", "tiny-dense"):
        raise ValueError(f"{profile.name!r} is not a built-in model")
    with _LOCK:
        cached = _CACHE.get(profile.name)
        if cached is None:
            cached = _CACHE[profile.name] = _build(profile)
        return cached
