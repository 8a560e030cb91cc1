"""Producers stay light while they work, not only at import.

A process that submits a job and a batch, follows them, reads results and audits (through the
real Postgres and the private Redis) never loads torch, diffusers, transformers, numpy,
farm.engine or the task module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from producer_helpers import Broker, write_manifest

from farm.settings import Settings

HEAVY = ("torch", "diffusers", "transformers", "numpy", "farm.engine", "farm.worker.task", "farm.worker.runner")

_CHILD = """
import json, sys
from farm.client import Client
from farm.settings import Settings
settings = Settings(**json.loads(sys.argv[1]))
with Client.from_settings(settings) as client:
    [job_id] = client.submit("a lighthouse at dusk", seed=3)
    sub = client.submit_batch(sys.argv[2])
    client.status(job_id), client.status(sub.batch_id)
    client.wait(sub.batch_id, timeout_s=0.2, poll_s=0.05)
    rows = client.results(sub.batch_id)
    client.cancel(job_id)
    client.audit()
heavy = sorted(m for m in json.loads(sys.argv[3]) if m in sys.modules)
print(json.dumps({"heavy": heavy, "rows": len(rows), "celery": "celery" in sys.modules}))
"""


def test_a_working_producer_loads_nothing_heavy(settings: Settings, broker: Broker, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [{"prompt": "a kite", "seeds": [1, 2]}])
    config = {"database_url": settings.database_url, "broker_url": settings.broker_url,
              "data_dir": str(settings.data_dir)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(config), str(manifest), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report == {"heavy": [], "rows": 2, "celery": True}  # it did send (by task name)
    assert broker.total() == 3
