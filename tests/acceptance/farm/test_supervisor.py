"""``farm worker --devices``.

Device lists (GPUs counted with nvidia-smi, never CUDA) and the supervisor's restart and
signal logic, with trivial child commands.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from farm_harness import wait_until

from farm.settings import reset_settings_cache
from farm.worker.supervisor import NoDevices, Supervisor, parse_devices, worker_command

NVIDIA_SMI = (
    "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0d6c2a4e-0000-0000-0000-000000000000)\n"
    "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-0d6c2a4e-0000-0000-0000-000000000001)\n"
)


def fake_smi(stdout: str, returncode: int = 0) -> Any:
    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        assert argv == ["nvidia-smi", "-L"]
        return subprocess.CompletedProcess(argv, returncode, stdout, "")

    return run


@pytest.fixture
def no_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    reset_settings_cache()


@pytest.mark.usefixtures("no_visible_devices")
def test_devices_all_counts_gpus_with_nvidia_smi() -> None:
    assert parse_devices("all", run=fake_smi(NVIDIA_SMI)) == ["cuda:0", "cuda:1"]
    with pytest.raises(NoDevices, match="no GPU"):
        parse_devices("all", run=fake_smi(""))
    with pytest.raises(NoDevices, match="no GPU"):
        parse_devices("all", run=fake_smi("", returncode=9))


def test_devices_all_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert parse_devices("all", run=fake_smi(NVIDIA_SMI)) == ["cuda:2", "cuda:3"]


def test_device_lists() -> None:
    assert parse_devices("0,1") == ["cuda:0", "cuda:1"]
    assert parse_devices("cuda:2, 3") == ["cuda:2", "cuda:3"]
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    for bad in ("0,0", "gpu0", "", "cuda:x"):
        with pytest.raises(NoDevices):
            parse_devices(bad)
    argv = worker_command("cuda:1", ["--queues", "batch"])
    assert argv[0] == sys.executable
    assert argv[3:] == ["worker", "--device", "cuda:1", "--queues", "batch"]


def test_backoff_doubles_up_to_the_cap() -> None:
    sup = Supervisor([("cpu", ["true"])], backoff_base_s=1, backoff_cap_s=10)
    assert [sup.backoff(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


CHILD = """
import signal, sys, time
from pathlib import Path
counter = Path(sys.argv[1])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
if n < 3:
    sys.exit(3)  # crash twice
def on_term(signum, frame):
    Path(sys.argv[2]).write_text(f"got {signum}")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(5)
"""


def test_supervisor_restarts_a_crashed_child_and_forwards_sigterm(tmp_path: Path) -> None:
    counter, term = tmp_path / "starts", tmp_path / "term"
    argv = [sys.executable, "-c", CHILD, str(counter), str(term)]
    sup = Supervisor([("cpu", argv)], backoff_base_s=0.1, backoff_cap_s=0.2, stable_after_s=30)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(sup.run(install_signals=False, poll_s=0.05)))
    thread.start()
    try:
        wait_until(lambda: counter.exists() and counter.read_text() == "3", 30, what="the third start")
        child = sup.children[0]
        wait_until(lambda: child.proc is not None and child.proc.poll() is None, 10, what="the child running")
        assert child.history == [3, 3] and child.starts == 3
        sup.stop(signal.SIGTERM)
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        sup.stop(signal.SIGKILL)
        thread.join(timeout=10)
    assert result == [0]
    assert term.read_text() == f"got {int(signal.SIGTERM)}"
    assert sup.children[0].history == [3, 3, 0]


def test_supervisor_exits_when_every_child_exits_cleanly(tmp_path: Path) -> None:
    sup = Supervisor([("cpu", [sys.executable, "-c", "pass"]), ("cpu", [sys.executable, "-c", "pass"])],
                     backoff_base_s=0.05)
    assert sup.run(install_signals=False, poll_s=0.05) == 0
    assert [c.starts for c in sup.children] == [1, 1]
