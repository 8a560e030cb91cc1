"""The queue's pieces without worker processes.

Names, the Celery app's configuration, message validation, the retry policy, fault parsing,
device pinning, enqueue against a real (or absent) broker, and ``farm reap``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from farm_harness import FARM, FarmEnv, RedisServer, free_port

from farm.errors import BrokerUnavailable, InvalidInput, LedgerUnavailable, SpecError
from farm.kinds import route_of, route_parts
from farm.ledger import JobRecord
from farm.profiles import PROFILES
from farm.queue.app import make_app, restore_interval
from farm.queue.enqueue import enqueue_jobs, retrying
from farm.queue.names import (
    QUEUE_BATCH,
    QUEUE_INTERACTIVE,
    TASK_RENDER,
    all_queues,
    parse_queues,
    queue_for,
    queues_for,
    route_of_queue,
)
from farm.settings import Settings
from farm.worker.faults import InjectedFailure, apply_faults, parse_fault
from farm.worker.main import DevicePlan, device_plan, node_name
from farm.worker.task import job_id_from_args

#: The queue of the tiny model's batch jobs (the harness's default model).
TINY_BATCH = queue_for("batch.tiny")


def test_names_and_routing() -> None:
    """One queue per route: the job's class and its model."""
    assert TASK_RENDER == "farm.render"
    assert route_of("interactive", "wan2.2-t2v-a14b") == "interactive.wan2.2-t2v-a14b"
    assert route_parts("interactive.wan2.2-t2v-a14b") == ("interactive", "wan2.2-t2v-a14b")
    assert queue_for("interactive.tiny") == f"{QUEUE_INTERACTIVE}.tiny" == "farm.interactive.tiny"
    assert queue_for("batch.wan2.2-ti2v-5b") == f"{QUEUE_BATCH}.wan2.2-ti2v-5b"
    assert route_of_queue("farm.batch.wan2.2-ti2v-5b") == "batch.wan2.2-ti2v-5b"
    for bad in ("urgent.tiny", "interactive", "batch.", "tiny"):
        with pytest.raises(ValueError, match="route"):
            queue_for(bad)
    with pytest.raises(ValueError):
        route_of_queue("celery")
    assert parse_queues("interactive,batch") == ["interactive", "batch"]
    assert parse_queues("farm.batch, interactive") == ["batch", "interactive"]
    with pytest.raises(ValueError, match="unknown queue"):
        parse_queues("celery")
    # a worker's queues: class by class (interactive first), each model it serves
    assert queues_for(["interactive", "batch"], ["tiny", "tiny-dense"]) == [
        "farm.interactive.tiny", "farm.interactive.tiny-dense", "farm.batch.tiny", "farm.batch.tiny-dense"]
    assert len(all_queues()) == 2 * len(PROFILES)


def test_app_is_json_only_late_ack_and_sets_visibility_everywhere(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0", visibility_timeout_s=3)
    conf = make_app(settings).conf
    assert conf.task_serializer == "json" and list(conf.accept_content) == ["json"]
    assert list(conf.result_accept_content) == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result and conf.result_backend is None
    assert conf.worker_send_task_events and not conf.task_send_sent_event  # producers are not workers
    assert conf.broker_transport_options["visibility_timeout"] == 3
    assert conf.result_backend_transport_options["visibility_timeout"] == 3
    assert conf.visibility_timeout == 3
    # kombu's sweep for abandoned messages follows the timeout (default: every 100 s).
    assert conf.broker_transport_options["unacked_restore_interval"] == 1
    assert conf.broker_transport_options["unacked_restore_throttle"] == 1
    assert {q.name for q in conf.task_queues} == set(all_queues())
    assert conf.task_default_queue == "farm.batch.tiny"
    assert conf.broker_connection_max_retries is None
    assert restore_interval(7200) == 30 and restore_interval(3) == 1 and restore_interval(60) == 15


def test_embedded_app_uses_the_filesystem_broker(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    conf = make_app(settings).conf
    assert conf.broker_url == "filesystem://"
    folder = conf.broker_transport_options["data_folder_in"]
    assert folder == conf.broker_transport_options["data_folder_out"]
    assert Path(folder).is_dir() and Path(folder).is_relative_to(tmp_path)


@pytest.mark.parametrize(
    ("args", "kwargs", "ok"),
    [
        (("0b6c1a52-4a47-4c59-9a87-2f6f0e1f2a3b",), {}, True),
        (("0B6C1A52-4A47-4C59-9A87-2F6F0E1F2A3B",), {}, True),
        (("0b6c1a524a474c599a872f6f0e1f2a3b",), {}, False),  # not the canonical text form
        (("../../etc/passwd",), {}, False),
        ((42,), {}, False),
        ((), {}, False),
        (("0b6c1a52-4a47-4c59-9a87-2f6f0e1f2a3b", "extra"), {}, False),
        (("0b6c1a52-4a47-4c59-9a87-2f6f0e1f2a3b",), {"x": 1}, False),
    ],
)
def test_only_a_job_id_is_accepted(args: tuple[object, ...], kwargs: dict[str, object], ok: bool) -> None:
    assert (job_id_from_args(args, kwargs) is not None) is ok


def test_retry_policy_backs_off_on_transient_errors_only(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, retry_base_s=0.01, retry_cap_s=0.05, retry_count=3)
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise LedgerUnavailable("down")
        return "ok"

    assert retrying(settings, what="flaky")(flaky) == "ok" and len(calls) == 3

    def permanent() -> None:
        calls.append(0.0)
        raise SpecError.one("seed", "seed", "bad")

    calls.clear()
    with pytest.raises(SpecError):
        retrying(settings, what="permanent")(permanent)
    assert len(calls) == 1

    def always() -> None:
        calls.append(time.monotonic())
        raise LedgerUnavailable("down")

    calls.clear()
    with pytest.raises(LedgerUnavailable):
        retrying(settings, what="always")(always)
    assert len(calls) == 4  # retry_count retries after the first call
    calls.clear()
    started = time.monotonic()
    with pytest.raises(LedgerUnavailable):
        retrying(settings, what="durable", min_total_s=0.5)(always)
    assert time.monotonic() - started >= 0.5 and len(calls) > 4


def test_fault_tags(tmp_path: Path) -> None:
    assert parse_fault("crash") == ("crash", 0.0)
    assert parse_fault("fail") == ("fail", 0.0)
    assert parse_fault("sleep:2.5") == ("sleep", 2.5)
    for bad in ("sleep", "sleep:-1", "explode", "crash:1"):
        with pytest.raises(ValueError):
            parse_fault(bad)

    class Job:
        def __init__(self, job_id: str, fault: str | None):
            self.id = job_id
            self.tags = {"fault": fault} if fault else {}

    now = [0.0]
    slept: list[float] = []
    died: list[bool] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    jobs = [Job("a", "fail"), Job("b", "sleep:0.3"), Job("c", None), Job("d", "nonsense"), Job("e", "sleep:0.2")]
    failing = apply_faults(jobs, lambda: False, sleep=sleep, die=lambda: died.append(True),  # type: ignore[arg-type]
                           clock=lambda: now[0])
    assert set(failing) == {"a"} and isinstance(failing["a"], InjectedFailure)
    assert not died
    assert sum(slept) == pytest.approx(0.3) and max(slept) <= 0.1 + 1e-9  # the longest sleep, in slices
    apply_faults([Job("x", "crash")], lambda: False, die=lambda: died.append(True))  # type: ignore[list-item]
    assert died == [True]
    stopped = time.monotonic()
    apply_faults([Job("y", "sleep:30")], lambda: True)  # type: ignore[list-item]
    assert time.monotonic() - stopped < 1


def test_device_pinning_plan() -> None:
    plan = device_plan("cuda:3")
    assert plan == DevicePlan("cuda:3", "cuda:0", {"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
                              "gpu3")
    assert device_plan("3") == plan
    import socket

    assert node_name(plan) == f"farm-gpu3@{socket.gethostname()}"
    assert node_name(plan, "mine@there") == "mine@there"
    cpu = device_plan("cpu")
    assert cpu.torch_device == "cpu" and cpu.env == {"CUDA_VISIBLE_DEVICES": ""}
    # one name format for every process that renders, stable across restarts (no process id)
    assert node_name(cpu) == f"farm-cpu@{socket.gethostname()}"
    assert node_name(cpu, role="render") == f"render-cpu@{socket.gethostname()}"
    for bad in ("gpu", "cuda", "cuda:x", "mps"):
        with pytest.raises(InvalidInput):
            device_plan(bad)


def test_worker_cli_pins_the_gpu_before_torch_is_imported() -> None:
    """In a fresh process: the CLI and the worker modules import no torch.

    Pinning cuda:3 sets CUDA_VISIBLE_DEVICES=3 while torch is still unimported, and pinning
    after torch is refused.
    """
    script = """
import os, sys
import farm.cli
from farm.worker.main import pin_device
assert "torch" not in sys.modules, "the CLI imported torch"
plan = pin_device("cuda:3")
assert os.environ["CUDA_VISIBLE_DEVICES"] == "3" and os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
import farm.queue.app, farm.worker.task, farm.queue.enqueue, farm.worker.runtime, farm.worker.supervisor
assert "torch" not in sys.modules, "a worker module imported torch"
import torch
try:
    pin_device("cuda:1")
except RuntimeError as exc:
    print("refused:", exc)
print("ok", plan.torch_device)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "refused: torch was imported" in proc.stdout and "ok cuda:0" in proc.stdout


def test_enqueue_sends_then_marks(farm_env: FarmEnv, redis_server: RedisServer) -> None:
    ids = farm_env.submit(farm_env.new_jobs(3), send=False)
    [inter] = farm_env.submit(farm_env.new_jobs(1, priority="interactive", seed0=9), send=False)
    pending = farm_env.ledger.jobs_to_enqueue(job_ids=[*ids, inter])
    assert pending[0] == (inter, "interactive.tiny")  # interactive first; the route names the model
    settings = farm_env.settings()
    assert enqueue_jobs(farm_env.ledger, pending, app=make_app(settings), settings=settings) == 4
    r = redis_server.client()
    assert r.llen("farm.batch.tiny") == 3 and r.llen("farm.interactive.tiny") == 1
    message = json.loads(r.lindex("farm.interactive.tiny", 0))
    assert message["headers"]["task"] == TASK_RENDER and message["content-type"] == "application/json"
    assert json.loads(__import__("base64").b64decode(message["body"]))[0] == [inter]
    assert all(j.enqueued_at is not None for j in farm_env.jobs([*ids, inter]))
    assert farm_env.ledger.jobs_to_enqueue(job_ids=[*ids, inter]) == []


def test_enqueue_with_the_broker_down_leaves_jobs_for_the_reaper(farm_env: FarmEnv) -> None:
    ids = farm_env.submit(farm_env.new_jobs(2), send=False)
    settings = Settings(**{**farm_env.settings().model_dump(), "broker_url": f"redis://127.0.0.1:{free_port()}/0",
                           "retry_base_s": 0.01, "retry_cap_s": 0.02})
    pending = farm_env.ledger.jobs_to_enqueue(job_ids=ids)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        enqueue_jobs(farm_env.ledger, pending, app=make_app(settings), settings=settings, attempts=1)
    assert time.monotonic() - started < 30
    assert all(j.enqueued_at is None and j.status.value == "queued" for j in farm_env.jobs(ids))
    assert sorted(farm_env.ledger.jobs_to_enqueue(job_ids=ids)) == sorted(pending)


def test_farm_reap_requeues_expired_leases_and_sends_lost_messages(
    farm_env: FarmEnv, redis_server: RedisServer
) -> None:
    [expired, unsent] = farm_env.submit(farm_env.new_jobs(2), send=False)
    claimed: JobRecord | None = farm_env.ledger.claim(expired, worker_host="gone#1", worker_device="cpu", lease_s=0.2)
    assert claimed is not None
    time.sleep(0.5)
    proc = subprocess.run([FARM, "reap", "--json"], env=farm_env.env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["expired"] == [expired] and sorted(report["enqueued"]) == sorted([expired, unsent])
    assert report["error"] is None
    assert redis_server.client().llen(TINY_BATCH) == 2
    job = farm_env.ledger.get_job(expired)
    assert job.status.value == "queued" and job.enqueued_at is not None
    again = subprocess.run([FARM, "reap", "--json"], env=farm_env.env(), capture_output=True, text=True, timeout=120)
    assert json.loads(again.stdout) == {"expired": [], "enqueued": [], "deferred": [], "error": None, "batches": [],
                                        "settled": []}


def test_periodic_reaper_defers_unsent_jobs_one_pass(farm_env: FarmEnv, redis_server: RedisServer) -> None:
    """A worker's reaper does not race a producer.

    A job unsent at one pass is sent at the next if still unsent; a job whose lease it just
    expired is sent at once.
    """
    from farm.queue.enqueue import reap

    settings = farm_env.settings()
    app = make_app(settings)
    [unsent, expired] = farm_env.submit(farm_env.new_jobs(2), send=False)
    assert farm_env.ledger.claim(expired, worker_host="gone#1", worker_device="cpu", lease_s=0.2) is not None
    time.sleep(0.5)
    first = reap(farm_env.ledger, settings, app=app, previous=set())
    assert first.expired == [expired] and first.enqueued == [expired] and first.deferred == [unsent]
    second = reap(farm_env.ledger, settings, app=app, previous=first.deferred)
    assert second.enqueued == [unsent] and second.deferred == []
    assert redis_server.client().llen(TINY_BATCH) == 2


def test_worker_command_usage_errors() -> None:
    from click.testing import CliRunner

    from farm.cli import cli

    runner = CliRunner()
    both = runner.invoke(cli, ["worker", "--devices", "0", "--device", "cuda:1"])
    assert both.exit_code == 2 and "not both" in both.output
    named = runner.invoke(cli, ["worker", "--devices", "0,1", "--hostname", "x@y"])
    assert named.exit_code == 2 and "--hostname" in named.output
    bad = runner.invoke(cli, ["worker", "--device", "gpu7"])
    assert bad.exit_code == 2 and "cpu or cuda:N" in bad.output
    # A supervised child inherits FARM_WORKER_DEVICES: its --device wins (no supervisor recursion).
    child = runner.invoke(cli, ["worker", "--device", "gpu7"], env={"FARM_WORKER_DEVICES": "0,1"})
    assert child.exit_code == 2 and "cpu or cuda:N" in child.output
    env_named = runner.invoke(cli, ["worker"], env={"FARM_WORKER_DEVICES": "0", "FARM_WORKER_HOSTNAME": "x@y"})
    assert env_named.exit_code == 2 and "--hostname" in env_named.output
