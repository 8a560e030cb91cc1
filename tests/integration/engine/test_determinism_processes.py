"""The same spec in two fresh processes gives the same frames; another seed gives others.

Also for the speed presets that cache steps (``draft``, ``custom``).

The processes differ in ``PYTHONHASHSEED`` and in torch's thread count (1 vs 2), and each builds
the tiny model from scratch (the weights fingerprint must agree too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from engine_helpers import make_canon

from farm.engine.components import Components

SNIPPET = """
import json, sys
from farm.engine.render import Engine
from farm.spec import parse_spec
engine = Engine(device="cpu", offload="none", torch_threads=int(sys.argv[1]))
out = {"fingerprint": engine.load("tiny").weights_fingerprint, "hashes": {}}
for seed in (1, 2):
    canon = parse_spec({"prompt": "a cat dancing in the rain", "seed": seed, "model": "tiny"}).canonical()
    out["hashes"][str(seed)] = engine.render([canon])[0].frames_sha256
for preset, extra in (("draft", {}), ("custom", {"cache_threshold": 0.1})):
    canon = parse_spec({"prompt": "a cat dancing in the rain", "seed": 1, "model": "tiny", "preset": preset,
                        **extra}).canonical()
    result = engine.render([canon])[0]
    out["hashes"][preset] = result.frames_sha256
    out["skipped_" + preset] = result.stats["cache"]["skipped"]
print("RESULT " + json.dumps(out))
"""


def spawn(threads: int, hash_seed: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.Popen(
        [sys.executable, "-c", SNIPPET, str(threads)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def collect(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_same_spec_same_frames_in_fresh_processes(tiny: Components, solo: Any) -> None:
    procs = [spawn(1, "0"), spawn(2, "4242")]
    a, b = (collect(p) for p in procs)
    assert a["fingerprint"] == b["fingerprint"] == tiny.weights_fingerprint
    assert a["hashes"] == b["hashes"]
    assert a["hashes"]["1"] != a["hashes"]["2"], "another seed gives other frames"
    # a cached render (speed presets) is deterministic too: same frames, same skipped forwards
    assert a["skipped_draft"] == b["skipped_draft"] and sum(a["skipped_draft"].values()) > 0
    assert a["skipped_custom"] == b["skipped_custom"]
    assert len({a["hashes"]["1"], a["hashes"]["draft"], a["hashes"]["custom"]}) == 3
    # and this process agrees with both
    assert solo(make_canon(seed=1)).frames_sha256 == a["hashes"]["1"]
    assert solo(make_canon(seed=2)).frames_sha256 == a["hashes"]["2"]
