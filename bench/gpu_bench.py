#!/usr/bin/env python
"""GPU benchmark: Wan2.2 T2V-A14B-shaped experts with random bf16 weights on one CUDA device.

What it measures, per offload policy of farm's placement layer (``farm.engine.placement``:
``none``, ``model``, ``expert``, ``sequential``):

* seconds per transformer forward for each expert at 480P (latents (1, 16, 21, 60, 104), 512 text
  tokens); a denoising step is 2 forwards (classifier-free guidance: both Wan2.2 guidance scales
  are > 1);
* the transfers one steady-state phase-batched cycle makes (text encoder -> high-noise expert ->
  low-noise expert -> VAE), read from the placement layer's transfer log: expert swap seconds
  (one expert onload) and the cycle's total transfer seconds;
* text-encoder seconds (prompt + negative prompt) and VAE decode seconds;
* peak device memory (``torch.cuda.max_memory_allocated``) under the policy.

jobs/hour is MODELLED from those measured components (no full 40-step render is run):

    T_job   = n_high * 2 * t_fwd_high + n_low * 2 * t_fwd_low + t_text + t_vae
    jobs/h  = 3600 * K / (K * T_job + T_moves)

with K compatible jobs phase-batched together (all run the high-noise phase, then all the
low-noise phase: one cycle of moves per batch, so 2/K expert swaps per job), T_moves the measured
transfer seconds of one cycle under the policy (0 under ``none``), and n_high / n_low the steps
each expert takes, counted with diffusers' UniPC flow-sigma schedule for the model profile's
steps, flow shift and boundary. Under ``sequential`` the streaming cost is inside t_fwd (group
offloading runs while measured).

The weights are random (bf16 experts and text encoder, float32 VAE), made on the device in
seconds: the modules are built on torch's meta device (no init), materialised with ``to_empty``,
filled with cheap random values, rope tables recomputed; nothing is downloaded. Timings of
random weights equal those of real weights (same shapes, same kernels).

Usage::

    python bench/gpu_bench.py --out bench-h100.json            # needs a CUDA device (exit 2 without)
    python bench/gpu_bench.py --smoke --out /tmp/smoke.json    # same code path, CPU, tiny shapes
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_FORMAT = "farm.gpu-bench/1"
CFG_FORWARDS_PER_STEP = 2
EXIT_NO_CUDA = 2

#: Wan-AI/Wan2.2-T2V-A14B-Diffusers transformer/config.json (both experts: ~14.3B parameters each).
A14B_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
}
#: UMT5-XXL encoder (google/umt5-xxl, Wan's text encoder: ~5.7B parameters).
UMT5_XXL_CONFIG: dict[str, Any] = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
}
#: Wan2.1 VAE (used by T2V-A14B) = AutoencoderKLWan's defaults.
WAN_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
}

SMOKE_TRANSFORMER_CONFIG: dict[str, Any] = {
    **A14B_TRANSFORMER_CONFIG,
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "text_dim": 32,
    "ffn_dim": 32,
    "num_layers": 2,
    "rope_max_seq_len": 32,
}
SMOKE_UMT5_CONFIG: dict[str, Any] = {
    **UMT5_XXL_CONFIG,
    "vocab_size": 64,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 1,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
}
SMOKE_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 3,
    "z_dim": 16,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}

EXPERT_NAMES = ("transformer", "transformer_2")


# -- arguments ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    p.add_argument("--smoke", action="store_true",
                   help="run the same code path on the CPU at tiny shapes in seconds (numbers meaningless)")
    p.add_argument("--device", default="cuda", help="CUDA device (default: cuda)")
    p.add_argument("--profile", default="wan2.2-t2v-a14b", help="farm model profile for steps/boundary/shift")
    p.add_argument("--policies", default="none,model,expert,sequential",
                   help="comma-separated offload policies to measure")
    p.add_argument("--ks", default="1,4,8", help="comma-separated phase-batch sizes K (jobs/hour table)")
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--text-len", type=int, default=512, help="text tokens (Wan pads prompts to 512)")
    p.add_argument("--warmup-forwards", type=int, default=1, help="untimed forwards per expert per policy")
    p.add_argument("--timed-forwards", type=int, default=2, help="timed forwards per expert per policy")
    p.add_argument("--no-text-encoder", action="store_true", help="skip the text encoder (t_text = 0)")
    p.add_argument("--no-vae", action="store_true", help="skip the VAE (t_vae = 0)")
    args = p.parse_args(argv)
    if args.smoke:
        args.device = "cpu"
        args.width, args.height, args.frames, args.text_len = 32, 32, 9, 8
    args.policies = [s.strip() for s in args.policies.split(",") if s.strip()]
    args.ks = [int(s) for s in args.ks.split(",") if s.strip()]
    if (args.frames - 1) % 4 or args.width % 16 or args.height % 16:
        p.error("frames must be 4k+1 and width/height multiples of 16")
    if args.timed_forwards < 1 or args.warmup_forwards < 0 or not args.ks or min(args.ks) < 1:
        p.error("--timed-forwards >= 1, --warmup-forwards >= 0, K >= 1")
    return args


# -- building random-weight modules ------------------------------------------------------------


def _fill_random_(module: Any, seed: int) -> None:
    """Cheap random values in place: biases 0, norm scales 1, other weights N(0, 0.02)."""
    import torch

    gen = None
    for i, (name, param) in enumerate(sorted(module.named_parameters())):
        leaf = name.rsplit(".", 1)[-1]
        with torch.no_grad():
            if leaf == "bias":
                param.zero_()
            elif leaf == "gamma" or (param.ndim == 1 and "norm" in name):
                param.fill_(1.0)
            else:
                if gen is None or gen.device != param.device:
                    gen = torch.Generator(device=param.device)
                gen.manual_seed(seed * 100_003 + i)
                param.normal_(0.0, 0.02, generator=gen)


def _cast_(module: Any, dtype: Any, keep_fp32: bool) -> None:
    """Cast floating parameters and buffers to ``dtype`` (on the meta device: free).

    The class's ``_keep_in_fp32_modules`` stay in float32, as diffusers' from_pretrained keeps
    them.
    """
    import torch

    keep = (getattr(type(module), "_keep_in_fp32_modules", None) or []) if keep_fp32 else []
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point():
            target = torch.float32 if any(k in name.split(".") for k in keep) else dtype
            tensor.data = tensor.data.to(target)


def _rebuild_rope_(module: Any, device: Any) -> None:
    """Non-persistent buffers are lost on the meta device.

    Recompute Wan's rope tables (float32, as from_pretrained leaves them). Any other buffer would
    be garbage: refuse.
    """
    import torch
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    rebuilt = set()
    for mname, sub in module.named_modules():
        if isinstance(sub, WanRotaryPosEmbed):
            fresh = WanRotaryPosEmbed(sub.attention_head_dim, sub.patch_size, sub.max_seq_len)
            sub.freqs_cos = fresh.freqs_cos.to(device=device, dtype=torch.float32)
            sub.freqs_sin = fresh.freqs_sin.to(device=device, dtype=torch.float32)
            rebuilt.update({f"{mname}.freqs_cos", f"{mname}.freqs_sin"})
    others = [n for n, _ in module.named_buffers() if n not in rebuilt]
    if others:
        raise RuntimeError(f"{type(module).__name__} has buffers this benchmark cannot rebuild: {others[:5]}")


def materialize(make: Callable[[], Any], device: str, dtype: Any, seed: int, *, keep_fp32: bool) -> Any:
    """Build a module without initialising it (meta device), allocate it on ``device`` in ``dtype``.

    Fill it with random values.
    """
    import torch

    with torch.device("meta"):
        module = make()
    _cast_(module, dtype, keep_fp32)
    module.to_empty(device=device)
    _rebuild_rope_(module, device)
    _fill_random_(module, seed)
    module.eval()
    module.requires_grad_(False)
    return module


def to_host_(module: Any, pin: bool) -> Any:
    """Move a module's tensors to (pinned, on CUDA) host memory, one tensor at a time.

    Device memory is freed as it goes; the result is the starting state of a loaded model
    (``Components`` are on the CPU).
    """
    import torch

    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.device.type == "cpu":
            continue
        host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
        host.copy_(tensor.data)
        tensor.data = host
    return module


def param_count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def tensor_bytes(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@dataclass
class Model:
    modules: dict[str, Any]
    transformer_config: dict[str, Any]
    build_seconds: float


def build_model(args: argparse.Namespace, device: str) -> Model:
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tcfg = SMOKE_TRANSFORMER_CONFIG if args.smoke else A14B_TRANSFORMER_CONFIG
    ucfg = SMOKE_UMT5_CONFIG if args.smoke else UMT5_XXL_CONFIG
    vcfg = SMOKE_VAE_CONFIG if args.smoke else WAN_VAE_CONFIG
    pin = device.startswith("cuda")
    started = time.perf_counter()
    modules: dict[str, Any] = {}
    if not args.no_text_encoder:
        modules["text_encoder"] = to_host_(materialize(
            lambda: UMT5EncoderModel(UMT5Config(**ucfg)), device, torch.bfloat16, 1, keep_fp32=False), pin)
    for seed, name in enumerate(EXPERT_NAMES, start=2):
        modules[name] = to_host_(materialize(
            lambda: WanTransformer3DModel(**tcfg), device, torch.bfloat16, seed, keep_fp32=True), pin)
    if not args.no_vae:
        modules["vae"] = to_host_(materialize(
            lambda: AutoencoderKLWan(**vcfg), device, torch.float32, 4, keep_fp32=False), pin)
    _sync(device)
    return Model(modules, dict(tcfg), time.perf_counter() - started)


# -- the schedule ------------------------------------------------------------------------------


def expert_steps(steps: int, flow_shift: float, boundary_ratio: float) -> tuple[int, int]:
    """(high-noise steps, low-noise steps) with diffusers' UniPC flow-sigma schedule and WanPipeline's switch rule.

    ``t >= boundary_ratio * num_train_timesteps`` runs the high-noise expert.
    """
    from diffusers import UniPCMultistepScheduler

    sched: Any = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
    )
    sched.set_timesteps(steps)
    boundary = boundary_ratio * sched.config.num_train_timesteps
    high = int((sched.timesteps >= boundary).sum())
    return high, steps - high


# -- measuring ---------------------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device: str, fn: Callable[[], Any]) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


@dataclass
class Inputs:
    latents: Any
    timestep: Any
    text: Any
    input_ids: Any
    attention_mask: Any


def make_inputs(args: argparse.Namespace, model: Model, device: str) -> Inputs:
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    lat_f, lat_h, lat_w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    latents = torch.randn((1, 16, lat_f, lat_h, lat_w), generator=gen).to(device)
    text_dim = model.transformer_config["text_dim"]
    text = torch.randn((1, args.text_len, text_dim), generator=gen).to(device, torch.bfloat16)
    vocab = (SMOKE_UMT5_CONFIG if args.smoke else UMT5_XXL_CONFIG)["vocab_size"]
    input_ids = torch.randint(3, vocab, (1, args.text_len), generator=gen).to(device)
    attention_mask = torch.ones((1, args.text_len), dtype=torch.long).to(device)
    timestep = torch.tensor([900.0], device=device)
    return Inputs(latents, timestep, text, input_ids, attention_mask)


def _forward(expert: Any, inputs: Inputs) -> Any:
    import torch

    return expert(
        hidden_states=inputs.latents.to(torch.bfloat16),
        timestep=inputs.timestep,
        encoder_hidden_states=inputs.text,
        return_dict=False,
    )[0]


def _encode(text_encoder: Any, inputs: Inputs) -> list[Any]:
    # prompt and negative prompt: two batch-1 calls, as WanPipeline.encode_prompt does
    return [
        text_encoder(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).last_hidden_state
        for _ in range(2)
    ]


def _decode(vae: Any, inputs: Inputs) -> Any:
    return vae.decode(inputs.latents.to(vae.dtype), return_dict=False)[0]


def run_cycle(placement: Any, model: Model, inputs: Inputs, device: str, forwards: int) -> dict[str, float]:
    """One phase-batched cycle's sequence of ``use`` calls, with ``forwards`` timed expert forwards each.

    The calls: text encoder, high-noise expert, low-noise expert, VAE. Text encoding and VAE
    decoding are timed separately (:func:`measure_components`), here only their moves happen.
    """
    out: dict[str, float] = {}
    if "text_encoder" in model.modules:
        placement.use("text_encoder")
    for name in EXPERT_NAMES:
        placement.use(name)
        run = functools.partial(_forward, model.modules[name], inputs)
        times = [_timed(device, run) for _ in range(forwards)]
        if times:
            out[f"forward_seconds_{name}"] = sum(times) / len(times)
    if "vae" in model.modules:
        placement.use("vae")
    return out


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if device.startswith("cuda") else None


def measure_components(model: Model, inputs: Inputs, device: str) -> dict[str, Any]:
    """Text encoding (prompt + negative) and VAE decoding, each alone on the device.

    Their time does not depend on the policy. One warm-up call each (the VAE's on a one-latent-frame
    input).
    """
    import torch

    from farm.engine.placement import Placement

    out: dict[str, Any] = {"text_encode_seconds": 0.0, "vae_decode_seconds": 0.0, "ok": True, "error": None}
    placement = Placement(device, "model")
    try:
        with torch.inference_mode():
            placement.attach({k: v for k, v in model.modules.items() if k in ("text_encoder", "vae")})
            if "text_encoder" in model.modules:
                placement.use("text_encoder")
                _encode(model.modules["text_encoder"], inputs)
                _reset_peak(device)
                encoder = model.modules["text_encoder"]
                out["text_encode_seconds"] = _timed(device, lambda: _encode(encoder, inputs))
                out["text_encode_peak_memory_bytes"] = _peak(device)
            if "vae" in model.modules:
                placement.use("vae")
                small = Inputs(inputs.latents[:, :, :1].contiguous(), inputs.timestep, inputs.text,
                               inputs.input_ids, inputs.attention_mask)
                _decode(model.modules["vae"], small)
                _reset_peak(device)
                out["vae_decode_seconds"] = _timed(device, lambda: _decode(model.modules["vae"], inputs))
                out["vae_decode_peak_memory_bytes"] = _peak(device)
    except Exception as exc:
        out.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    finally:
        placement.detach()
        _reset_peak(device)
    return out


def measure_policy(policy: str, model: Model, inputs: Inputs, args: argparse.Namespace,
                   device: str) -> dict[str, Any]:
    """Attach the model under ``policy``, run a warm-up cycle, then a measured steady-state cycle."""
    import torch

    from farm.engine.placement import Placement, TransferLog

    _reset_peak(device)
    placement = Placement(device, policy)
    result: dict[str, Any] = {"policy": policy, "ok": False, "error": None}
    try:
        with torch.inference_mode():
            attach_seconds = _timed(device, lambda: placement.attach(model.modules))
            # cycle 1 warms up and leaves the modules where a previous batch would have;
            # cycle 2 is the steady state that is measured
            run_cycle(placement, model, inputs, device, args.warmup_forwards)
            mark = len(placement.log)
            timings = run_cycle(placement, model, inputs, device, args.timed_forwards)
            cycle = placement.log.since(mark)
        swaps = [e for e in cycle if e.swap]
        expert_offloads = [e for e in cycle if e.module in EXPERT_NAMES and e.kind in ("offload", "unstream")]
        result.update(timings)
        result.update(
            ok=True,
            attach_seconds=attach_seconds,
            swaps_per_cycle=len(swaps),
            swap_seconds=(sum(e.seconds for e in swaps) / len(swaps)) if swaps else 0.0,
            swap_bytes=(sum(e.bytes for e in swaps) // len(swaps)) if swaps else 0,
            expert_offload_seconds=(
                sum(e.seconds for e in expert_offloads) / len(expert_offloads) if expert_offloads else 0.0
            ),
            cycle_transfer_seconds=sum(e.seconds for e in cycle),
            cycle_transfers=TransferLog.summarize(cycle),
            max_experts_resident=placement.max_experts_resident,
        )
    except Exception as exc:  # an OOM under one policy must not lose the others' numbers
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        result["traceback_tail"] = traceback.format_exc().splitlines()[-3:]
    finally:
        result["peak_memory_bytes"] = _peak(device)
        try:
            placement.detach()
        except Exception as exc:
            result["detach_error"] = f"{type(exc).__name__}: {exc}"
        _reset_peak(device)
    return result


def jobs_table(policies: list[dict[str, Any]], ks: list[int], n_high: int, n_low: int,
               t_text: float, t_vae: float) -> list[dict[str, Any]]:
    rows = []
    for res in policies:
        if not res.get("ok"):
            for k in ks:
                rows.append({"policy": res["policy"], "K": k, "ok": False, "error": res.get("error")})
            continue
        step_high = CFG_FORWARDS_PER_STEP * res["forward_seconds_transformer"]
        step_low = CFG_FORWARDS_PER_STEP * res["forward_seconds_transformer_2"]
        job = n_high * step_high + n_low * step_low + t_text + t_vae
        moves = res["cycle_transfer_seconds"]
        for k in ks:
            batch = k * job + moves
            rows.append({
                "policy": res["policy"],
                "K": k,
                "ok": True,
                "step_seconds_high": step_high,
                "step_seconds_low": step_low,
                "swap_seconds": res["swap_seconds"],
                "swaps_per_job": res["swaps_per_cycle"] / k,
                "moves_seconds_per_job": moves / k,
                "job_seconds": batch / k,
                "jobs_per_hour": 3600.0 * k / batch if batch > 0 else math.inf,
                "peak_memory_gib": (res["peak_memory_bytes"] / 2**30) if res["peak_memory_bytes"] else None,
            })
    return rows


def print_table(rows: list[dict[str, Any]], out: Any) -> None:
    header = (f"{'policy':<11}{'K':>3}{'step hi s':>11}{'step lo s':>11}{'swap s':>9}{'swaps/job':>10}"
              f"{'job s':>10}{'jobs/h':>9}{'peak GiB':>10}")
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in rows:
        if not r["ok"]:
            print(f"{r['policy']:<11}{r['K']:>3}  failed: {r['error']}", file=out)
            continue
        peak = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        print(f"{r['policy']:<11}{r['K']:>3}{r['step_seconds_high']:>11.3f}{r['step_seconds_low']:>11.3f}"
              f"{r['swap_seconds']:>9.3f}{r['swaps_per_job']:>10.2f}{r['job_seconds']:>10.1f}"
              f"{r['jobs_per_hour']:>9.2f}{peak:>10}", file=out)


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device is available. This benchmark measures a GPU: run it on a GPU "
              "node, or pass --smoke for a quick CPU run of the same code path (its numbers mean nothing).",
              file=sys.stderr)
        return EXIT_NO_CUDA
    from farm.engine.envinfo import environment_fingerprint
    from farm.engine.placement import PINNED_ROUND_THRESHOLD_MB, POLICIES, limit_pinned_rounding
    from farm.profiles import get_profile

    unknown = [p for p in args.policies if p not in POLICIES]
    if unknown:
        print(f"gpu_bench: unknown policies {unknown}; known: {', '.join(POLICIES)}", file=sys.stderr)
        return EXIT_NO_CUDA
    # sequential installs diffusers' group-offloading hooks on the experts for good: run it last
    policies = [p for p in POLICIES if p in args.policies]
    profile = get_profile(args.profile)
    if profile.boundary_ratio is None:
        print(f"gpu_bench: profile {profile.name} is not a two-expert model", file=sys.stderr)
        return EXIT_NO_CUDA
    device = args.device
    if device.startswith("cuda"):
        limit_pinned_rounding()
    n_high, n_low = expert_steps(profile.steps, profile.flow_shift, profile.boundary_ratio)

    model = build_model(args, device)
    inputs = make_inputs(args, model, device)
    components = measure_components(model, inputs, device)
    print(f"gpu_bench: text encoder and VAE: {'ok' if components['ok'] else components['error']}",
          file=sys.stderr)
    results = []
    for policy in policies:
        res = measure_policy(policy, model, inputs, args, device)
        results.append(res)
        print(f"gpu_bench: {policy}: {'ok' if res['ok'] else res['error']}", file=sys.stderr)
    t_text = float(components["text_encode_seconds"])
    t_vae = float(components["vae_decode_seconds"])
    table = jobs_table(results, args.ks, n_high, n_low, t_text, t_vae)

    expert = model.modules[EXPERT_NAMES[0]]
    report: dict[str, Any] = {
        "format": BENCH_FORMAT,
        "mode": "smoke" if args.smoke else "gpu",
        "note": ("SMOKE RUN: tiny shapes on the CPU; the numbers only show the code path works"
                 if args.smoke else "random bf16 weights, real Wan2.2 T2V-A14B shapes"),
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "environment": environment_fingerprint(init_cuda=device.startswith("cuda")),
        "shapes": {
            "width": args.width, "height": args.height, "frames": args.frames,
            "latents": list(inputs.latents.shape), "text_tokens": args.text_len,
        },
        "model": {
            "transformer_config": {k: (list(v) if isinstance(v, tuple) else v)
                                   for k, v in model.transformer_config.items()},
            "params_per_expert": param_count(expert),
            "bytes_per_expert": tensor_bytes(expert),
            "text_encoder_params": (
                param_count(model.modules["text_encoder"]) if "text_encoder" in model.modules else None
            ),
            "vae_params": param_count(model.modules["vae"]) if "vae" in model.modules else None,
            "build_seconds": model.build_seconds,
        },
        "schedule": {
            "profile": profile.name, "steps": profile.steps, "flow_shift": profile.flow_shift,
            "boundary_ratio": profile.boundary_ratio, "high_noise_steps": n_high, "low_noise_steps": n_low,
            "forwards_per_step": CFG_FORWARDS_PER_STEP,
        },
        "measured": {"warmup_forwards": args.warmup_forwards, "timed_forwards": args.timed_forwards,
                     "text_encode_seconds": t_text, "vae_decode_seconds": t_vae, "components": components,
                     "pinned_round_threshold_mb": PINNED_ROUND_THRESHOLD_MB if device.startswith("cuda")
                     else None},
        "method": "modelled from measured components; no full render is run",
        "formula": ("T_job = n_high*2*t_fwd_high + n_low*2*t_fwd_low + t_text + t_vae; "
                    "jobs_per_hour = 3600*K / (K*T_job + T_moves), T_moves = transfer seconds of one "
                    "phase-batched cycle under the policy"),
        "policies": results,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    print_table(table, sys.stdout)
    print(f"gpu_bench: wrote {args.out}", file=sys.stderr)
    return 0 if components["ok"] and all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
