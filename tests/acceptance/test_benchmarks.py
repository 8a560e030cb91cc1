"""The benchmarks run (short mode), so they cannot rot.

Each starts its own services, measures the farm side by side with its baseline in the same run, and
reports the ratio. The full runs and their numbers are in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bench(script: str, out: Path) -> dict[str, object]:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--short", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bulk_submit_benchmark_runs(tmp_path: Path, pg_admin: object) -> None:
    data = run_bench("bulk_submit.py", tmp_path / "bulk.json")
    assert data["jobs"] == 1000
    for key in ("bare_publish_s", "bare_publish_with_events_s", "farm_batch_s", "ratio_vs_bare"):
        value = data[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, value)
    assert set(data["stages_s"]) == {"expand", "ledger", "enqueue"}  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_overhead_benchmark_runs(tmp_path: Path, pg_admin: object) -> None:
    data = run_bench("overhead.py", tmp_path / "overhead.json")
    assert data["jobs"] == 5
    for key in ("bare_round_trip_ms", "farm_overhead_ms", "ratio", "pair_ratio_p25", "pair_ratio_p75"):
        value = data[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, value)
    assert data["pair_ratio_p25"] <= data["pair_ratio_median"] <= data["pair_ratio_p75"]
    # told at the commit (LISTEN/NOTIFY), with the final status: one read, before the job finished
    assert data["status_reads_per_job"] == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_presets_benchmark_runs(tmp_path: Path) -> None:
    data = run_bench("presets.py", tmp_path / "presets.json")
    [rows] = data["models"].values()  # type: ignore[union-attr]
    assert [r["preset"] for r in rows] == ["final", "draft", "custom 0.1", "custom 0.3"]
    final, draft = rows[0], rows[1]
    assert final["skipped"] == 0 and final["psnr_vs_final_db"] is None and final["wall_ratio"] == 1
    assert draft["steps"] < final["steps"] and draft["skipped"] > 0
    for row in rows:
        assert math.isfinite(row["wall_s"]) and row["wall_s"] > 0 and math.isfinite(row["denoise_ratio"])
