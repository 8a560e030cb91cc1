"""Speed presets side by side with ``final``: transformer forwards skipped and wall time, on CPU.

Two models, both built in code (seeded, eval mode):

* **tiny** — farm's built-in ``tiny`` (2 transformer blocks per expert, 32x32, 9 frames);
* **wide** — the tiny text encoder with wider, deeper experts (8 blocks, 4 heads of 32, FFN 512)
  and a somewhat wider VAE (base_dim 8, dim_mult 1,2,2,2), rendered at 64x64, 17 frames: the
  experts take most of the time, as Wan2.2's do on a GPU (the tiny model's time is mostly its
  text encoder and VAE, which no preset changes).

For each model, each preset is rendered ``--repeats`` times through farm's render loop
(``WanAdapter``, one CPU thread); reported are the steps, the expert forwards (and how many of
them the step cache cut short after the first block), the median denoising seconds and wall
seconds, their ratios to ``final`` measured in the same run, and the PSNR of the preset's frames
against ``final``'s (how far the preview is from the final render). Presets: ``final``,
``draft`` (the profile's draft steps + First Block Cache at its threshold) and ``custom`` at two
thresholds (the profile's steps, caching only).

    python bench/presets.py [--repeats 3] [--short] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from farm.engine.components import Components
from farm.engine.placement import Placement
from farm.engine.render import Engine
from farm.engine.tiny import build_builtin, seeded_module
from farm.engine.wan import WanAdapter
from farm.spec import parse_spec

#: (label, spec fields) of the presets measured.
PRESETS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("final", {}),
    ("draft", {"preset": "draft"}),
    ("custom 0.1", {"preset": "custom", "cache_threshold": 0.1}),
    ("custom 0.3", {"preset": "custom", "cache_threshold": 0.3}),
)
PROMPT = "a red dog runs over the city at night"


def wide_components() -> Components:
    """The tiny model's tokenizer and text encoder, with wider experts and a wider VAE."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    tiny = build_builtin("tiny")
    seeded = seeded_module  # seeded, eval mode, no gradients: as farm builds its tiny models
    def expert() -> Any:
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=512, num_layers=8, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )

    vae = seeded(10, lambda: AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                              temperal_downsample=[False, True, True]))
    return dataclasses.replace(tiny, transformer=seeded(11, expert), transformer_2=seeded(12, expert), vae=vae,
                               weights_fingerprint="bench-wide")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def measure(components: Components, size: dict[str, int], repeats: int) -> list[dict[str, Any]]:
    adapter = WanAdapter(components, Placement("cpu", "none"))
    warm = parse_spec({"prompt": PROMPT, "seed": 6, "model": "tiny", **size}).canonical()
    adapter.render([warm])  # untimed: the first render pays one-off costs
    rows, final_frames = [], None
    for label, fields in PRESETS:
        canon = parse_spec({"prompt": PROMPT, "seed": 7, "model": "tiny", **size, **fields}).canonical()
        walls, denoise, outcome = [], [], None
        for _ in range(repeats):
            start = time.perf_counter()
            outcome = adapter.render([canon])[0]
            walls.append(time.perf_counter() - start)
            seconds = outcome.stats["batch"]["seconds"]
            denoise.append(sum(v for k, v in seconds.items() if k not in ("encode", "decode")))
        assert outcome is not None and outcome.frames is not None
        frames = outcome.frames
        if final_frames is None:
            final_frames = frames
        forwards = sum(outcome.stats["forwards"].values())
        skipped = sum(outcome.stats.get("cache", {}).get("skipped", {}).values())
        quality = psnr(frames, final_frames)
        rows.append({"preset": label, "steps": canon["steps"], "cache_threshold": canon["cache_threshold"],
                     "forwards": forwards, "skipped": skipped, "denoise_s": statistics.median(denoise),
                     "wall_s": statistics.median(walls),
                     "psnr_vs_final_db": None if math.isinf(quality) else quality})
    base = rows[0]
    for row in rows:
        row["denoise_ratio"] = row["denoise_s"] / base["denoise_s"]
        row["wall_ratio"] = row["wall_s"] / base["wall_s"]
        row["speedup"] = base["wall_s"] / row["wall_s"]
    return rows


def print_table(name: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{name}")
    print(f"{'preset':<11} {'steps':>5} {'forwards (skipped)':>19} {'denoise s':>10} {'ratio':>6} {'wall s':>8} "
          f"{'ratio':>6} {'speed-up':>8} {'PSNR dB':>8}")
    for r in rows:
        psnr_text = "exact" if r["psnr_vs_final_db"] is None else f"{r['psnr_vs_final_db']:.1f}"
        print(f"{r['preset']:<11} {r['steps']:>5} {r['forwards']:>11} ({r['skipped']:>4}) {r['denoise_s']:>10.3f} "
              f"{r['denoise_ratio']:>6.2f} {r['wall_s']:>8.3f} {r['wall_ratio']:>6.2f} {r['speedup']:>7.2f}x "
              f"{psnr_text:>8}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--short", action="store_true", help="1 repeat, the tiny model only (CI: it must run)")
    ap.add_argument("--json", type=Path, default=None, help="Also write the numbers to this file.")
    args = ap.parse_args()
    Engine(device="cpu", torch_threads=1)  # one thread and the deterministic flags, as a worker renders
    repeats = 1 if args.short else args.repeats
    models = {"tiny (32x32, 9 frames)": (build_builtin("tiny"), {})}
    if not args.short:
        models["wide (64x64, 17 frames)"] = (wide_components(), {"width": 64, "height": 64, "num_frames": 17})
    results = {}
    for name, (components, size) in models.items():
        results[name] = measure(components, size, repeats)
        print_table(name, results[name])
    if args.json:
        data = {"repeats": repeats, "models": results}
        args.json.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
