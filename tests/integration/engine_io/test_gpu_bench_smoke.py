"""bench/gpu_bench.py: the smoke run, the refusal without CUDA, and its model of jobs/hour."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
BENCH = ROOT / "bench" / "gpu_bench.py"
TABLE_FIELDS = {"policy", "K", "ok", "step_seconds_high", "step_seconds_low", "swap_seconds", "swaps_per_job",
                "moves_seconds_per_job", "job_seconds", "jobs_per_hour", "peak_memory_gib"}


def _bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_bench", module)  # dataclasses look their module up while executing
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "tmp.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["format"] == "farm.gpu-bench/1" and report["mode"] == "smoke"
    assert "SMOKE" in report["note"]
    assert report["shapes"]["latents"] == [1, 16, 3, 4, 4]
    sched = report["schedule"]
    assert sched["high_noise_steps"] + sched["low_noise_steps"] == sched["steps"] == 40
    assert [p["policy"] for p in report["policies"]] == ["none", "model", "expert", "sequential"]
    assert all(p["ok"] for p in report["policies"]), report["policies"]
    table = report["table"]
    assert len(table) == 4 * 3
    assert {(r["policy"], r["K"]) for r in table} == {
        (p, k) for p in ("none", "model", "expert", "sequential") for k in (1, 4, 8)
    }
    for row in table:
        assert set(row) >= TABLE_FIELDS
        assert row["jobs_per_hour"] > 0 and row["step_seconds_high"] > 0
    swaps = {(r["policy"], r["K"]): r["swaps_per_job"] for r in table}
    assert swaps[("none", 1)] == 0
    assert swaps[("expert", 1)] == 2 and swaps[("expert", 4)] == 0.5
    policies = {p["policy"]: p for p in report["policies"]}
    assert policies["none"]["max_experts_resident"] == 2
    assert all(policies[p]["max_experts_resident"] == 1 for p in ("model", "expert", "sequential"))
    assert report["environment"]["env_digest"]
    assert "policy" in proc.stdout and "jobs/h" in proc.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
def test_refuses_without_cuda(tmp_path: Path) -> None:
    out = tmp_path / "tmp.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--smoke" in proc.stderr
    assert not out.exists()


def test_expert_steps_follow_the_unipc_schedule() -> None:
    bench = _bench_module()
    assert bench.expert_steps(40, 12.0, 0.875) == (26, 14)  # the official A14B shift
    assert bench.expert_steps(40, 3.0, 0.875) == (13, 27)  # the hub scheduler config's shift


def test_jobs_table_formula() -> None:
    bench = _bench_module()
    results: list[dict[str, Any]] = [
        {"policy": "none", "ok": True, "forward_seconds_transformer": 2.0,
         "forward_seconds_transformer_2": 1.0, "cycle_transfer_seconds": 0.0, "swap_seconds": 0.0,
         "swaps_per_cycle": 0, "peak_memory_bytes": 2 * 2**30},
        {"policy": "expert", "ok": True, "forward_seconds_transformer": 2.0,
         "forward_seconds_transformer_2": 1.0, "cycle_transfer_seconds": 40.0, "swap_seconds": 20.0,
         "swaps_per_cycle": 2, "peak_memory_bytes": None},
        {"policy": "model", "ok": False, "error": "OutOfMemoryError"},
    ]
    rows = bench.jobs_table(results, [1, 4], n_high=10, n_low=30, t_text=1.0, t_vae=9.0)
    by = {(r["policy"], r["K"]): r for r in rows}
    job = 10 * 2 * 2.0 + 30 * 2 * 1.0 + 1.0 + 9.0  # 110 s
    assert by[("none", 1)]["job_seconds"] == pytest.approx(job)
    assert by[("none", 4)]["jobs_per_hour"] == pytest.approx(3600 / job)
    assert by[("expert", 1)]["jobs_per_hour"] == pytest.approx(3600 / (job + 40))
    assert by[("expert", 4)]["jobs_per_hour"] == pytest.approx(3600 * 4 / (4 * job + 40))
    assert by[("expert", 4)]["swaps_per_job"] == 0.5
    assert by[("none", 1)]["peak_memory_gib"] == 2.0
    assert by[("model", 1)]["ok"] is False and by[("model", 4)]["error"] == "OutOfMemoryError"
