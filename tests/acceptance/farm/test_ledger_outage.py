"""The ledger database goes away for ~20 s mid-batch.

Workers keep their outputs, retry, and every job ends recorded, nothing lost or duplicated.

The database is a PRIVATE Postgres cluster (``initdb`` into a temporary directory, its own port and
socket directory), so stopping it disturbs nobody. As root, the Postgres binaries run as the
``postgres`` user (they refuse to run as root).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from farm_harness import FARM, FarmEnv, RedisServer, assert_exactly_once, wait_until
from private_postgres import PrivatePostgres


def test_ledger_outage_mid_batch(tmp_path: Path, private_pg: PrivatePostgres, redis_server: RedisServer) -> None:
    env = FarmEnv(tmp=tmp_path, database_url=private_pg.url, broker_url=redis_server.url)
    env.overrides.update(FARM_LEASE_S="60")
    try:
        upgrade = subprocess.run([FARM, "db", "upgrade"],
                                 env=env.env(), capture_output=True, text=True, timeout=120, check=False)
        assert upgrade.returncode == 0, upgrade.stderr
        env.start_worker("a", wait=False)
        env.start_worker("b")
        env.wait_ready(env.workers[0])
        ids = env.submit(env.new_jobs(16, prefix="outage", tags=[{"fault": "sleep:0.5"}] * 16))
        wait_until(lambda: sum(j.status.value == "succeeded" for j in env.jobs(ids)) >= 3, 120,
                   what="3 jobs done before the outage")
        running = sum(j.status.value == "running" for j in env.jobs(ids))
        env.ledger.close()
        private_pg.stop("fast")
        down_at = time.monotonic()
        time.sleep(20)
        private_pg.start()
        outage = time.monotonic() - down_at
        jobs = env.wait_terminal(ids, 240)
        assert_exactly_once(env, ids)
        assert all(w.alive() for w in env.workers)
        assert all(j.attempts == 1 for j in jobs), [j.attempts for j in jobs]
        retried = sum(w.text().count("unavailable") for w in env.workers)
        assert retried > 0, "the workers never noticed the outage"
        print(f"\n[numbers] ledger down {outage:.1f} s mid-batch with {running} job(s) rendering: 16/16 jobs "
              f"succeeded exactly once, every job in 1 attempt; {retried} retried ledger calls logged")
    except BaseException:
        print(f"\n---------- worker logs ----------\n{env.logs()}")
        raise
    finally:
        env.close()
