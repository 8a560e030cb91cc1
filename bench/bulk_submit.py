"""Bulk submit: how fast `farm batch` turns a manifest into recorded, queued jobs.

Measures, in one run on the same machine, for an N-job manifest (default 10,000):

* expand  — load + expand + validate + job keys (no I/O but the file);
* ledger  — ``Ledger.create_batch`` (one transaction, dedup on) into a fresh Postgres database;
* enqueue — one Celery message per job to a private Redis (``farm.queue.enqueue.send_jobs``);
* total   — ``Client.submit_batch`` end to end, on another fresh database and an empty queue.

Ratios are against the baseline "ledger" stage. Needs Postgres (default: the local server, trust
auth; a scratch database is created and dropped) and the ``redis-server`` binary (a private server
on a free port is started and stopped).

    python bench/bulk_submit.py [--jobs 10000] [--pg-admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_manifest(path: Path, jobs: int) -> None:
    prompts = max(1, jobs // 10)
    items = [{"prompt": f"product shot {i}, studio light, variant {i % 7}", "seeds": [1, 2, 3, 4, 5]}
             for i in range(prompts)]
    doc = {"version": 1, "name": f"bulk-{secrets.token_hex(4)}", "defaults": {"model": "tiny", "steps": 2},
           "variants": {"guidance_scale": [3.5, 4.0]}, "items": items}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()

    from farm.client import Client
    from farm.ledger import Ledger, NewJob
    from farm.manifest import expand, load_manifest
    from farm.queue.app import make_app
    from farm.queue.enqueue import send_jobs
    from farm.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="farm-bulk-"))
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                              "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    admin = psycopg.connect(args.pg_admin_url, autocommit=True)
    dbs = [f"farm_bench_{secrets.token_hex(6)}" for _ in range(2)]
    try:
        for name in dbs:
            admin.execute(f'CREATE DATABASE "{name}"')
        base = args.pg_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        urls = [f"{base}/{name}" for name in dbs]
        time.sleep(0.3)
        manifest_path = tmp / "bulk.yaml"
        write_manifest(manifest_path, args.jobs)

        t0 = time.perf_counter()
        batch = expand(load_manifest(manifest_path))
        t_expand = time.perf_counter() - t0
        n = len(batch.jobs)

        settings = Settings(database_url=urls[0], broker_url=f"redis://127.0.0.1:{port}/0", data_dir=tmp)
        with Ledger(urls[0]) as ledger:
            ledger.upgrade()
            new = [NewJob.from_spec(j.spec, batch_index=i) for i, j in enumerate(batch.jobs)]
            t0 = time.perf_counter()
            batch_id, _ = ledger.create_batch(batch.digest, "bulk", "bulk.yaml", new)
            t_ledger = time.perf_counter() - t0
            pending = ledger.jobs_to_enqueue(batch_id=batch_id)
            t0 = time.perf_counter()
            sent, error = send_jobs(ledger, pending, app=make_app(settings), settings=settings)
            t_enqueue = time.perf_counter() - t0
            assert error is None and len(sent) == n, error

        settings2 = Settings(database_url=urls[1], broker_url=f"redis://127.0.0.1:{port}/1", data_dir=tmp)
        with Ledger(urls[1]) as ledger:
            ledger.upgrade()
        with Client.from_settings(settings2) as client:
            t0 = time.perf_counter()
            sub = client.submit_batch(manifest_path)
            t_total = time.perf_counter() - t0
        assert sub.job_count == n and sub.enqueued == n, sub

        print(f"bulk submit of {n} jobs (manifest {manifest_path.stat().st_size:,} bytes), Postgres + private Redis")
        print(f"{'stage':10} {'seconds':>9} {'jobs/s':>10} {'x ledger time':>14}")
        for name, seconds in (("expand", t_expand), ("ledger", t_ledger), ("enqueue", t_enqueue),
                              ("total", t_total)):
            print(f"{name:10} {seconds:9.3f} {n / seconds:10,.0f} {seconds / t_ledger:14.2f}")
        return 0
    finally:
        redis.terminate()
        redis.wait(10)
        for name in dbs:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
