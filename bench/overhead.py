"""Producer-visible overhead of one job, side by side with a bare Celery round trip.

In one run, on one private Redis and one scratch Postgres database, both workers up at once and
the two measured **alternately** (bare, farm, bare, farm, ...), so a machine that slows down or
speeds up during the run weighs on both sides alike (each measurement after a short pause, so it
starts on an idle machine):

* **bare** — a trivial Celery task (``bench/celery_echo.py``) on a solo worker, Redis broker and
  result backend: the median ``delay(i).get()`` round trip;
* **farm** — ``farm worker --device cpu`` (the tiny model, warm): the median of submit -> the
  producer sees ``succeeded`` (``Client.submit_detailed`` + ``Client.wait``), minus the job's own
  recorded render and encode seconds. That is everything farm adds around the render: the ledger
  writes and the publish, the worker's claim, cache check, heartbeats, storing and recording,
  and the producer being told.

Prints both, their ratio (target: farm <= 3 x bare), the spread of the ratio over the pairs (each
farm job over the bare round trip measured just before it: quartiles) and how many status reads
``wait`` made per job; also Celery's best case, ``n`` round trips back to back in a hot loop before
the alternation, and farm's ratio to that (reported for context: every process is awake in a hot
loop, while a farm job always follows a render).

    python bench/overhead.py [--jobs 30] [--short] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from services import DEFAULT_PG_ADMIN_URL, private_redis, scratch_databases  # noqa: E402

FARM = str(Path(sys.executable).with_name("farm"))
#: The smallest tiny render: 1 step, 5 frames of 32x32.
SPEC = {"steps": 1, "num_frames": 5, "width": 32, "height": 32}
TARGET_RATIO = 3.0
#: Pause before each measurement, so that each starts on an idle machine (the other side's
#: worker has finished acknowledging and bookkeeping its last message).
SETTLE_S = 0.05


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextmanager
def bare_worker(broker: str, tmp: Path) -> Iterator[Callable[[int], float]]:
    """The baseline's solo Celery worker, warm; yields one timed ``delay(i).get()`` round trip."""
    env = {**os.environ, "BENCH_BROKER_URL": f"{broker}/1", "BENCH_RESULT_URL": f"{broker}/2"}
    log = open(tmp / "celery.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "celery_echo", "worker", "--pool", "solo",
                               "--concurrency", "1", "-l", "WARNING", "--without-mingle", "--without-gossip"],
                              cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)
    os.environ.update(BENCH_BROKER_URL=env["BENCH_BROKER_URL"], BENCH_RESULT_URL=env["BENCH_RESULT_URL"])
    from celery_echo import echo

    def one(i: int) -> float:
        t0 = time.perf_counter()
        assert echo.delay(i).get(timeout=10) == i
        return time.perf_counter() - t0

    try:
        echo.delay(-1).get(timeout=60)  # the worker is up and warm
        yield one
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()


@contextmanager
def farm_worker(broker: str, database_url: str, tmp: Path) -> Iterator[Callable[[int], tuple[float, float, int]]]:
    """A warm ``farm worker``; yields one timed job: (wall, wall - render - encode, status reads)."""
    from farm.client import Client
    from farm.settings import Settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_DATABASE_URL=database_url, FARM_BROKER_URL=f"{broker}/0", FARM_DATA_DIR=str(tmp / "data"),
               FARM_TORCH_THREADS="1", FARM_PHASE_BATCH="1", FARM_LOG_LEVEL="INFO")
    log_path = tmp / "farm-worker.log"
    log = open(log_path, "wb")  # noqa: SIM115
    worker = subprocess.Popen([FARM, "worker", "--device", "cpu", "--hostname", "bench@overhead"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    settings = Settings(database_url=database_url, broker_url=f"{broker}/0", data_dir=tmp / "data")
    try:
        wait_for(lambda: " ready." in log_path.read_text(errors="replace"), 120, "the farm worker")
        with Client(settings=settings) as client:
            def one(seed: int) -> tuple[float, float, int]:
                reads = client.status_reads
                t0 = time.perf_counter()
                sub = client.submit_detailed("overhead probe, a red fox", seed=seed, no_cache=True, **SPEC)
                report = client.wait(sub.job_ids[0], timeout_s=60, poll_s=1.0)
                wall = time.perf_counter() - t0
                assert report.all_succeeded, report
                timings = client.get_job(sub.job_ids[0]).timings or {}
                return wall, wall - timings["render_s"] - timings["encode_s"], client.status_reads - reads

            one(10_000)  # the model loads on the first job
            yield one
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()


def round_trips(broker: str, database_url: str, n: int, tmp: Path) -> dict[str, list[Any]]:
    """``n`` bare round trips back to back, then ``n`` bare round trips and ``n`` farm jobs alternately.

    Lists ``back_to_back``, ``bare``, ``walls``, ``overheads`` (seconds) and ``reads``.
    """
    bare, walls, overheads, reads = [], [], [], []
    with bare_worker(broker, tmp) as bare_one, farm_worker(broker, database_url, tmp) as farm_one:
        back_to_back = [bare_one(i) for i in range(n)]  # Celery's best case: a hot loop
        for i in range(n):
            time.sleep(SETTLE_S)
            bare.append(bare_one(i))
            time.sleep(SETTLE_S)
            wall, overhead, count = farm_one(i)
            walls.append(wall)
            overheads.append(overhead)
            reads.append(count)
    return {"back_to_back": back_to_back, "bare": bare, "walls": walls, "overheads": overheads, "reads": reads}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--short", action="store_true", help="5 jobs (CI: the benchmark must run, not rot)")
    ap.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    ap.add_argument("--json", type=Path, default=None, help="Also write the numbers to this file.")
    args = ap.parse_args()
    n = 5 if args.short else args.jobs
    tmp = Path(tempfile.mkdtemp(prefix="farm-overhead-"))
    with private_redis(tmp) as broker, scratch_databases(args.pg_admin_url, 1) as (database_url,):
        runs = round_trips(broker, database_url, n, tmp)
    bare_ms = statistics.median(runs["bare"]) * 1000
    hot_ms = statistics.median(runs["back_to_back"]) * 1000
    farm_ms = statistics.median(runs["overheads"]) * 1000
    ratio = farm_ms / bare_ms
    pairs = [farm / bare for farm, bare in zip(runs["overheads"], runs["bare"], strict=True)]
    p25, p50, p75 = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else (pairs[0],) * 3
    result = {"jobs": n, "bare_round_trip_ms": round(bare_ms, 2), "farm_overhead_ms": round(farm_ms, 2),
              "farm_wall_ms": round(statistics.median(runs["walls"]) * 1000, 2), "ratio": round(ratio, 2),
              "pair_ratio_p25": round(p25, 2), "pair_ratio_median": round(p50, 2), "pair_ratio_p75": round(p75, 2),
              "bare_back_to_back_ms": round(hot_ms, 2), "ratio_to_back_to_back": round(farm_ms / hot_ms, 2),
              "status_reads_per_job": statistics.median(runs["reads"]), "target_ratio": TARGET_RATIO,
              "meets_target": ratio <= TARGET_RATIO,
              "meets_target_back_to_back": round(farm_ms / hot_ms, 2) <= TARGET_RATIO}
    print(f"one job, {n} runs each (medians), Postgres + private Redis, tiny model on 1 CPU thread")
    print(f"  bare Celery delay().get(), alternating with farm    {bare_ms:8.2f} ms")
    print(f"  farm submit -> succeeded seen (wall)                {result['farm_wall_ms']:8.2f} ms")
    print(f"  farm overhead (wall - render - encode)              {farm_ms:8.2f} ms")
    print(f"  ratio farm overhead / bare                          {ratio:8.2f}  (target <= {TARGET_RATIO:g}: "
          f"{'met' if result['meets_target'] else 'NOT met'})")
    print(f"  per pair (farm job / bare just before): quartiles   {p25:.2f} / {p50:.2f} / {p75:.2f}")
    print(f"  bare Celery delay().get(), back to back (hot loop)  {hot_ms:8.2f} ms")
    hot_met = result["ratio_to_back_to_back"] <= TARGET_RATIO
    print(f"  ratio farm overhead / back-to-back bare             {result['ratio_to_back_to_back']:8.2f}  "
          f"(target <= {TARGET_RATIO:g}: {'met' if hot_met else 'NOT met'})")
    print(f"  status reads per job (wait)                         {result['status_reads_per_job']:8}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
