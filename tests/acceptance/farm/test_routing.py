"""Capability routing with real worker processes.

A worker consumes only the queues of the models it serves (their weights verified at start); a job
whose model no live worker serves stays queued and says why; the reaper's sends respect routes.
Real ``farm worker`` processes, a private Redis, a fresh Postgres ledger, the built-in tiny models
(``tiny`` and ``tiny-dense``: two routes).
"""

from __future__ import annotations

import json
import subprocess
import time

from farm_harness import FARM, FarmEnv, RedisServer, assert_exactly_once, claimed_count, wait_until
from tiny_weights import save_a14b_shaped

from farm.client import Client
from farm.queue.names import queue_for


def farm_cli(farm_env: FarmEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FARM, *args], env=farm_env.env(), capture_output=True, text=True, timeout=120)


def test_a_worker_never_claims_a_model_it_does_not_serve(farm_env: FarmEnv, redis_server: RedisServer) -> None:
    """Jobs of a model no live worker serves wait (with the reason); a worker serving it renders them."""
    tiny_only = farm_env.start_worker("tinyonly", "--models", "tiny")
    dense = farm_env.submit(farm_env.new_jobs(3, prefix="dense", model="tiny-dense"), send=False)
    tiny = farm_env.submit(farm_env.new_jobs(2, prefix="tiny"))
    done = farm_env.wait_terminal(tiny, 120)
    assert {j.worker_host for j in done} == {"tinyonly@farmtest"}
    # the reaper (in the worker, every second) sends the unsent dense jobs: to their own route's queue
    r = redis_server.client()
    wait_until(lambda: r.llen(queue_for("batch.tiny-dense")) == 3, 30, what="the reaper to send the dense jobs")
    time.sleep(3)  # a few more reaper passes and polls: nothing takes them
    assert all(j.status.value == "queued" and claimed_count(farm_env, j.id) == 0 for j in farm_env.jobs(dense))
    assert r.llen(queue_for("batch.tiny-dense")) == 3
    with Client.from_settings(farm_env.settings()) as client:
        [reason] = client.status(dense).waiting
    assert "3 queued job(s) of model tiny-dense: no live worker serves this model (live workers serve tiny)" in reason
    shown = farm_cli(farm_env, "status", dense[0])
    assert shown.returncode == 0 and "waiting: 1 queued job(s) of model tiny-dense: no live worker" in shown.stdout

    farm_env.start_worker("densenode", "--models", "tiny-dense", "--tags", "dense,cpu-box")
    done = farm_env.wait_terminal(dense, 120)
    assert_exactly_once(farm_env, dense)
    assert {j.worker_host for j in done} == {"densenode@farmtest"}
    with Client.from_settings(farm_env.settings()) as client:
        assert client.status(dense).waiting == ()
    rows = {w["name"]: w for w in json.loads(farm_cli(farm_env, "workers", "--json").stdout)}
    assert rows["tinyonly@farmtest"]["models"] == ["tiny"] and rows["tinyonly@farmtest"]["tags"] == []
    assert rows["densenode@farmtest"]["models"] == ["tiny-dense"]
    assert rows["densenode@farmtest"]["tags"] == ["dense", "cpu-box"]
    assert rows["densenode@farmtest"]["detail"]["device_memory_mb"] > 0
    assert tiny_only.alive()


def test_serving_is_checked_at_start(farm_env: FarmEnv) -> None:
    """Without ``--models`` a worker serves the models whose weights it has; naming one it lacks refuses the start."""
    farm_env.start_worker("default")
    [row] = [w for w in farm_env.ledger.list_workers() if w.name == "default@farmtest"]
    assert row.models == ["tiny", "tiny-dense"]  # no Wan2.2 weights under FARM_MODEL_DIR here
    assert row.detail is not None and row.detail["queues"] == [
        "farm.interactive.tiny", "farm.interactive.tiny-dense", "farm.batch.tiny", "farm.batch.tiny-dense"]
    refused = farm_cli(farm_env, "worker", "--device", "cpu", "--hostname", "a14b@farmtest",
                       "--models", "wan2.2-t2v-a14b")
    assert refused.returncode != 0
    assert "models: this worker cannot serve wan2.2-t2v-a14b" in refused.stderr and "does not exist" in refused.stderr
    partial = farm_env.tmp / "data" / "models" / "Wan2.2-T2V-A14B-Diffusers"
    partial.mkdir(parents=True)
    (partial / "model_index.json").write_text("{}")
    refused = farm_cli(farm_env, "worker", "--device", "cpu", "--hostname", "a14b@farmtest",
                       "--models", "wan2.2-t2v-a14b")
    assert refused.returncode != 0 and "missing: scheduler/scheduler_config.json" in refused.stderr
    unknown = farm_cli(farm_env, "worker", "--device", "cpu", "--hostname", "x@farmtest", "--models", "sd15")
    assert unknown.returncode != 0 and "unknown model 'sd15'" in unknown.stderr
    assert not any(w.name in ("a14b@farmtest", "x@farmtest") for w in farm_env.ledger.list_workers())


def test_only_the_node_with_the_weights_renders_a_directory_model(farm_env: FarmEnv) -> None:
    """A14B jobs wait while the only worker has no A14B weights; a worker whose FARM_MODEL_DIR has them renders them.

    The weights are a tiny random pipeline saved in Wan2.2-T2V-A14B's Diffusers layout (boundary
    0.875, flow shift 12), so the real ``wan2.2-t2v-a14b`` profile loads them on a CPU.
    """
    bare = farm_env.start_worker("bare")  # FARM_MODEL_DIR empty: serves the built-in models only
    a14b = farm_env.submit(farm_env.new_jobs(2, prefix="a cat in the rain", model="wan2.2-t2v-a14b"))
    tiny = farm_env.submit(farm_env.new_jobs(1, prefix="tiny meanwhile"))
    farm_env.wait_terminal(tiny, 120)
    time.sleep(2)
    assert [j.status.value for j in farm_env.jobs(a14b)] == ["queued", "queued"]
    assert not any(claimed_count(farm_env, j) for j in a14b)
    with Client.from_settings(farm_env.settings()) as client:
        [reason] = client.status(a14b).waiting
    assert "of model wan2.2-t2v-a14b: no live worker serves this model" in reason

    models = farm_env.tmp / "gpu-node-models"
    save_a14b_shaped(models)
    farm_env.start_worker("gpunode", FARM_MODEL_DIR=str(models))
    done = farm_env.wait_terminal(a14b, 180)
    assert_exactly_once(farm_env, a14b)
    assert {j.worker_host for j in done} == {"gpunode@farmtest"}
    assert all(j.weights_fingerprint for j in done)
    [row] = [w for w in farm_env.ledger.list_workers() if w.name == "gpunode@farmtest"]
    assert row.models is not None and "wan2.2-t2v-a14b" in row.models
    assert bare.alive()
