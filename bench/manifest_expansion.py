"""How fast a 10,000-job manifest loads, expands, validates and gets its job keys.

Run: ``python bench/manifest_expansion.py [--prompts 1000] [--repeats 5]``

Writes a YAML manifest of PROMPTS items x 5 seeds x 2 guidance variants (the items cycle through
the seed strategies: explicit list, from_prompt, sweep, pool, random) into a temporary directory,
then times ``expand(load_manifest(path))`` (which validates every job and computes every job key)
over a few repeats. For scale it also times, in the same run, a baseline: plain
``RenderSpec.model_validate`` of the same number of spec dicts (no canonical form, no key), and
prints the ratio. Torch-free.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from farm.manifest import expand, load_manifest
from farm.spec import RenderSpec

SEEDS_PER_PROMPT = 5
GUIDANCE = [3.5, 4.0]


def seed_selection(i: int) -> dict[str, object]:
    kind = i % 5
    if kind == 0:
        return {"seeds": [i * 10 + k for k in range(SEEDS_PER_PROMPT)]}
    if kind == 1:
        return {"seed": {"from_prompt": {"salt": "bench", "count": SEEDS_PER_PROMPT}}}
    if kind == 2:
        return {"seed": {"sweep": {"base": 1_000_000 + i * 10, "radius": 2}}}
    if kind == 3:
        return {"seed": {"pool": SEEDS_PER_PROMPT}}
    return {"seed": {"random": SEEDS_PER_PROMPT}}


def write_manifest(directory: Path, prompts: int) -> Path:
    manifest = {
        "version": 1,
        "name": "bench",
        "defaults": {"model": "tiny", "priority": "batch", "tags": {"campaign": "bench"}},
        "variants": {"guidance_scale": GUIDANCE},
        "seed_pool": list(range(5_000_000, 5_000_000 + 997)),
        "items": [
            {"prompt": f"product shot {i}: a red sneaker on a wet street, night, neon", **seed_selection(i)}
            for i in range(prompts)
        ],
    }
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = write_manifest(Path(tmp), args.prompts)
        size_bytes = path.stat().st_size
        times = []
        jobs = 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            batch = expand(load_manifest(path))
            keys = batch.job_keys
            times.append(time.perf_counter() - t0)
            jobs = len(keys)
        assert len(set(keys)) == jobs, "job keys must be unique"

        dicts = [
            {
                "prompt": j.spec.prompt,
                "seed": j.spec.seed,
                "model": "tiny",
                "guidance_scale": j.spec.guidance_scale,
                "tags": {"campaign": "bench"},
            }
            for j in batch.jobs
        ]
        base_times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for d in dicts:
                RenderSpec.model_validate(d)
            base_times.append(time.perf_counter() - t0)

    best, median = min(times), statistics.median(times)
    base_best = min(base_times)
    print(
        f"manifest: {args.prompts} prompts x {SEEDS_PER_PROMPT} seeds x {len(GUIDANCE)} variants "
        f"= {jobs} jobs ({size_bytes:,} bytes of YAML)"
    )
    print(
        f"load+expand+validate+job keys: best {best * 1e3:.1f} ms, median {median * 1e3:.1f} ms "
        f"-> {jobs / best:,.0f} jobs/s (median {jobs / median:,.0f} jobs/s)"
    )
    print(
        f"baseline RenderSpec.model_validate of {jobs} dicts: best {base_best * 1e3:.1f} ms "
        f"-> {jobs / base_best:,.0f} specs/s"
    )
    print(f"ratio (pipeline time / baseline time): {best / base_best:.2f}x")


if __name__ == "__main__":
    main()
