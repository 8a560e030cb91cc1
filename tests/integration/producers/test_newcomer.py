"""What a newcomer runs into first.

``Client()`` as documented, a mistyped or stopped broker (a clear error and a non-zero exit within
seconds; the jobs stay recorded and the reaper sends them), sweeps that get one id to follow,
``status``/``wait`` over several ids, and ``--broker-url`` on every command that talks to the
broker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner
from private_redis import PrivateRedis, free_port
from producer_helpers import Broker, RunFarm, Work, write_manifest

from farm.cli import cli
from farm.client import Client
from farm.ledger import Ledger

#: What "within a few seconds" means for a producer facing a dead broker (the default budget is
#: FARM_SEND_TIMEOUT_S = 3 s, plus the process start).
DEAD_BROKER_EXIT_S = 8.0

_CLIENT_NO_ARGS = """
from farm.client import Client
with Client() as client:
    [job_id] = client.submit("a red fox in snow", seed=7)
    print(job_id, client.status(job_id).counts["queued"], client.ledger.display_url)
"""


def test_client_with_no_arguments_uses_the_farm_settings(tmp_path: Path) -> None:
    """``Client()`` (as the README shows it) opens the ledger the FARM_* settings name.

    With nothing set, the embedded one in FARM_DATA_DIR.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.run([sys.executable, "-c", _CLIENT_NO_ARGS], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    job_id, queued, url = proc.stdout.split()
    assert queued == "1" and url.endswith("ledger.sqlite3")
    with Ledger(f"sqlite:///{tmp_path / 'data' / 'ledger.sqlite3'}") as ledger:
        assert ledger.get_job(job_id).status.value == "queued"


def test_a_dead_broker_is_reported_fast_and_nothing_is_lost(
    run_farm: RunFarm, ledger: Ledger, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there: a mistyped port
    dead = f"redis://127.0.0.1:{port}/0"
    started = time.monotonic()
    proc = run_farm("submit", "a kite over dunes", "--seed", "5", FARM_BROKER_URL=dead, FARM_RETRY_COUNT="6",
                    FARM_RETRY_BASE_S="0.5", FARM_RETRY_CAP_S="30")
    took = time.monotonic() - started
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert took < DEAD_BROKER_EXIT_S, took
    [job_id] = proc.stdout.split()
    assert f"127.0.0.1:{port}" in proc.stderr and "NOT sent" in proc.stderr and "reaper" in proc.stderr
    assert "Traceback" not in proc.stderr
    job = ledger.get_job(job_id)
    assert job.status.value == "queued" and job.enqueued_at is None  # recorded, not sent

    manifest = write_manifest(tmp_path / "two.jsonl", [{"prompt": "a", "seed": 1}, {"prompt": "b", "seed": 2}])
    batch = run_farm("batch", str(manifest), "--json", FARM_BROKER_URL=dead)
    assert batch.returncode == 3 and json.loads(batch.stdout)["not_sent"] == 2

    # the broker comes up (on the port that was meant): one reaper pass sends all three
    (tmp_path / "redis").mkdir()
    server = PrivateRedis(tmp_path / "redis", port=port)
    try:
        reap = run_farm("reap", "--json", "--broker-url", dead)
        assert reap.returncode == 0, reap.stderr
        assert job_id in json.loads(reap.stdout)["enqueued"] and len(json.loads(reap.stdout)["enqueued"]) == 3
        assert Broker(server).total() == 3
    finally:
        server.stop()
    assert ledger.get_job(job_id).enqueued_at is not None


def test_a_mistyped_broker_scheme_is_a_clear_error(run_farm: RunFarm, ledger: Ledger) -> None:
    proc = run_farm("submit", "a kite", "--seed", "1", FARM_BROKER_URL="redsi://127.0.0.1:6379/0")
    assert proc.returncode == 2 and "broker_url" in proc.stderr and "redis://" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert ledger.list_jobs() == []  # refused before anything was written


def test_sweeps_get_one_batch_id_and_status_wait_take_several_ids(
    run_farm: RunFarm, client: Client, ledger: Ledger, work: Work
) -> None:
    swept = run_farm("submit", "a paper lantern", "--sweep", "10:1", "--priority", "batch", "--json")
    assert swept.returncode == 0, swept.stderr
    sub = json.loads(swept.stdout)
    assert sub["batch_id"] and len(sub["job_ids"]) == 3
    assert [j.id for j in ledger.batch_jobs(sub["batch_id"])] == sub["job_ids"]
    human = run_farm("submit", "a paper lantern", "--sweep", "20:1")
    assert human.returncode == 0 and "batch " in human.stderr and "farm wait " in human.stderr
    work()
    first = sub["job_ids"][0]
    around = run_farm("sweep", first, "--radius", "1", "--json")
    assert around.returncode == 0, around.stderr
    neighbours = json.loads(around.stdout)
    assert neighbours["batch_id"] and len(neighbours["job_ids"]) == 2
    assert {ledger.get_job(j).parent_job_id for j in neighbours["job_ids"]} == {first}

    group = run_farm("status", sub["batch_id"], neighbours["batch_id"], "--json")
    assert group.returncode == 0, group.stderr
    report = json.loads(group.stdout)
    # the sweep 9..11 rendered; its neighbours 8 and 10: 10 was already rendered (answered from the cache)
    assert report["kind"] == "group" and report["total"] == 5 and report["counts"]["succeeded"] == 4
    work()
    waited = run_farm("wait", sub["batch_id"], neighbours["batch_id"], first, "--timeout", "60", "--json")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["all_succeeded"] and json.loads(waited.stdout)["total"] == 5
    unknown = run_farm("status", first, "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 1 and "00000000-0000-4000-8000-000000000000" in unknown.stderr


#: Commands that send to or read from the broker (the rest touch only the ledger or nothing).
BROKER_COMMANDS = ("submit", "batch", "sweep", "rerender", "audit", "cancel", "worker", "reap", "api", "flower")


def test_every_command_that_talks_to_the_broker_takes_broker_url() -> None:
    runner = CliRunner()
    for name in BROKER_COMMANDS:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "--broker-url" in result.output and "FARM_BROKER_URL" in result.output, name
