"""Bulk submit.

``farm batch`` of an N-job manifest (validate + ledger + enqueue) against a bare pipelined
publish of N Celery messages on the same Redis, in one run.

* **bare** — N ``farm.render`` messages sent by Celery itself (``send_task`` in kombu publish
  batches of 500, the farm's own app configuration), once with Celery's ``task-sent`` events (the
  farm's setting) and once without: nothing else — no manifest, no ledger;
* **farm** — ``Client.submit_batch(manifest)`` end to end on a fresh Postgres database: load,
  expand and validate every item, one ledger transaction (dedup, COPY of jobs and events), then
  every message published and marked sent;
* the stages of the farm path on their own: expand, ledger (``Ledger.admit_batch``), enqueue.

Targets (issue 7): farm >= 0.8 x the bare publish rate (the faster bare variant, without
events), and >= 5,000 jobs/s on Postgres.

    python bench/bulk_submit.py [--jobs 10000] [--short] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from services import DEFAULT_PG_ADMIN_URL, private_redis, scratch_databases  # noqa: E402

TARGET_RATIO = 0.8
TARGET_JOBS_PER_S = 5000.0


def write_manifest(path: Path, jobs: int, subject: str = "product shot") -> None:
    prompts = max(1, jobs // 10)
    items = [{"prompt": f"{subject} {i}, studio light, variant {i % 7}", "seeds": [1, 2, 3, 4, 5]}
             for i in range(prompts)]
    doc = {"version": 1, "name": f"bulk-{secrets.token_hex(4)}", "defaults": {"model": "tiny", "steps": 2},
           "variants": {"guidance_scale": [3.5, 4.0]}, "items": items}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def bare_publish(broker_url: str, n: int, *, events: bool) -> float:
    """Seconds for Celery to publish ``n`` farm.render messages, pipelined (the baseline)."""
    import redis

    from farm.queue.app import make_app
    from farm.queue.names import TASK_RENDER, queue_for

    queue = queue_for("batch.tiny")  # the route of the manifest's jobs: the tiny model's batch queue
    from farm.settings import Settings

    app = make_app(Settings(broker_url=broker_url, data_dir=Path(tempfile.mkdtemp())))
    app.conf.task_send_sent_event = events
    ids = [str(uuid.uuid4()) for _ in range(n)]
    started = time.perf_counter()
    with app.connection_for_write(transport_options={"retry_on_timeout": False}) as conn:
        producer = app.amqp.Producer(conn)
        for start in range(0, n, 500):
            with producer.batch(max_size=1001):
                for job_id in ids[start : start + 500]:
                    app.send_task(TASK_RENDER, args=[job_id], queue=queue, producer=producer,
                                  ignore_result=True, retry=False)
    seconds = time.perf_counter() - started
    client = redis.Redis.from_url(broker_url)
    assert client.llen(queue) == n
    client.delete(queue)
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--short", action="store_true", help="1,000 jobs (CI: the benchmark must run, not rot)")
    ap.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    ap.add_argument("--json", type=Path, default=None, help="Also write the numbers to this file.")
    args = ap.parse_args()
    jobs = 1_000 if args.short else args.jobs

    from farm.client import Client
    from farm.ledger import Ledger, NewJob
    from farm.manifest import expand, load_manifest
    from farm.queue.enqueue import send_jobs
    from farm.queue.names import queue_for
    from farm.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="farm-bulk-"))
    manifest_path = tmp / "bulk.yaml"
    write_manifest(manifest_path, jobs)
    with private_redis(tmp) as broker, scratch_databases(args.pg_admin_url, 2) as urls:
        bare_events = bare_publish(f"{broker}/3", jobs, events=True)
        bare = bare_publish(f"{broker}/3", jobs, events=False)

        # the farm path end to end: what `farm batch` does
        settings = Settings(database_url=urls[0], broker_url=f"{broker}/0", data_dir=tmp)
        warm = tmp / "warm.yaml"
        write_manifest(warm, 10, subject="warm-up shot")
        with Client(settings=settings) as client:
            client.submit_batch(warm)  # imports and connections, as a long-lived producer has them
            started = time.perf_counter()
            sub = client.submit_batch(manifest_path)
            farm = time.perf_counter() - started
        n = sub.job_count
        assert n == jobs and sub.enqueued == n, sub
        import redis

        assert redis.Redis.from_url(f"{broker}/0").llen(queue_for("batch.tiny")) == n + 10

        # the same stages one by one (a second database, another Redis db)
        started = time.perf_counter()
        batch = expand(load_manifest(manifest_path))
        t_expand = time.perf_counter() - started
        stage_settings = Settings(database_url=urls[1], broker_url=f"{broker}/1", data_dir=tmp)
        with Ledger(urls[1]) as ledger:
            new = [NewJob.from_spec(j.spec, batch_index=i) for i, j in enumerate(batch.jobs)]
            started = time.perf_counter()
            admitted = ledger.admit_batch(batch.digest, "bulk", "bulk.yaml", new)
            t_ledger = time.perf_counter() - started
            started = time.perf_counter()
            sent, error = send_jobs(ledger, admitted.to_send, settings=stage_settings)
            t_enqueue = time.perf_counter() - started
            assert error is None and len(sent) == n, error

    ratio = bare / farm
    result = {"jobs": n, "bare_publish_s": round(bare, 3), "bare_publish_with_events_s": round(bare_events, 3),
              "farm_batch_s": round(farm, 3), "farm_jobs_per_s": round(n / farm), "ratio_vs_bare": round(ratio, 2),
              "ratio_vs_bare_with_events": round(bare_events / farm, 2),
              "stages_s": {"expand": round(t_expand, 3), "ledger": round(t_ledger, 3), "enqueue": round(t_enqueue, 3)},
              "meets_targets": ratio >= TARGET_RATIO and n / farm >= TARGET_JOBS_PER_S}
    print(f"bulk submit of {n} jobs (manifest {manifest_path.stat().st_size:,} bytes), Postgres + private Redis")
    print(f"  {'':44} {'seconds':>8} {'jobs/s':>9} {'rate vs bare':>13}")
    rows = [("bare Celery pipelined publish (no events)", bare), ("bare Celery pipelined publish + sent events",
                                                                bare_events),
            ("farm batch: validate + ledger + enqueue", farm), ("  stage: load + expand + validate", t_expand),
            ("  stage: ledger (one transaction, COPY)", t_ledger), ("  stage: publish + mark sent", t_enqueue)]
    for name, seconds in rows:
        print(f"  {name:44} {seconds:8.3f} {n / seconds:9,.0f} {bare / seconds:13.2f}")
    print(f"  targets: rate >= {TARGET_RATIO:g} x bare (no events): {ratio:.2f}; >= {TARGET_JOBS_PER_S:,.0f} jobs/s: "
          f"{n / farm:,.0f} -> {'met' if result['meets_targets'] else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
