"""``farm worker --devices all|0,1``: one worker process per GPU, supervised.

The parent never initialises CUDA (it does not even import torch): GPUs are counted with
``nvidia-smi -L``, or taken from ``CUDA_VISIBLE_DEVICES`` when that is set. Each child is
``farm worker --device cuda:N``, which sets ``CUDA_VISIBLE_DEVICES=N`` (and
``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so N means what ``nvidia-smi`` shows) in its own environment
before torch is imported, and loads its model in its own process.

A child that exits with a non-zero status (a crash, an injected ``fault: crash``, the OOM killer)
is started again after a backoff that doubles per crash in a row (``backoff_base`` .. ``backoff_cap``;
the count resets once a child has run ``stable_after_s``). A child that exits 0 (a clean stop) is
not restarted. SIGTERM and SIGINT are forwarded to every child (their warm shutdown finishes or
hands back the current job); the supervisor exits when all children have exited.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from farm.errors import ExpectedError
from farm.settings import process_environment

log = logging.getLogger(__name__)

#: ``nvidia-smi -L`` lines look like ``GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)``.
_GPU_LINE = re.compile(r"^GPU (\d+):")
NVIDIA_SMI_TIMEOUT_S = 30.0
DEFAULT_BACKOFF_BASE_S = 1.0
DEFAULT_BACKOFF_CAP_S = 60.0
DEFAULT_STABLE_AFTER_S = 60.0
#: How often the supervisor looks at its children.
POLL_S = 0.5


class NoDevices(ExpectedError):
    """``--devices`` named no usable device (no GPU found, or an invalid list)."""


def count_gpus(run: Callable[..., Any] = subprocess.run) -> list[str]:
    """The GPU indices ``nvidia-smi -L`` lists (without initialising CUDA here)."""
    if run is subprocess.run and shutil.which("nvidia-smi") is None:
        return []
    try:
        proc = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi -L failed: %s", exc)
        return []
    if proc.returncode != 0:
        log.warning("nvidia-smi -L exited with %s: %s", proc.returncode, (proc.stderr or "").strip()[:200])
        return []
    return [m.group(1) for line in proc.stdout.splitlines() if (m := _GPU_LINE.match(line.strip()))]


def visible_gpus(run: Callable[..., Any] = subprocess.run) -> list[str]:
    """GPU indices this machine offers farm: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi``."""
    visible = process_environment().get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if not all(e.isdigit() for e in entries):
            raise NoDevices(f"CUDA_VISIBLE_DEVICES={visible!r}: --devices needs numeric GPU indices")
        return entries
    return count_gpus(run)


def parse_devices(text: str, run: Callable[..., Any] = subprocess.run) -> list[str]:
    """``all`` | ``0,1`` | ``cuda:0,cuda:1`` | ``cpu,cpu`` -> one torch device per child."""
    text = text.strip()
    if text == "all":
        devices = [f"cuda:{i}" for i in visible_gpus(run)]
        if not devices:
            raise NoDevices("--devices all: no GPU found (nvidia-smi -L lists none)")
        return devices
    devices = []
    for part in (p.strip() for p in text.split(",")):
        if part.isdigit():
            devices.append(f"cuda:{part}")
        elif part == "cpu" or re.fullmatch(r"cuda:\d+", part):
            devices.append(part)
        else:
            raise NoDevices(f"--devices: {part!r} is not a GPU index, cuda:N or cpu")
    if not devices:
        raise NoDevices("--devices: empty list")
    gpus = [d for d in devices if d != "cpu"]
    if len(set(gpus)) != len(gpus):
        raise NoDevices(f"--devices: a GPU is listed twice ({text})")
    return devices


def worker_command(device: str, extra: Sequence[str] = ()) -> list[str]:
    """The child command for one device: ``farm worker --device DEVICE ...``."""
    return [sys.executable, "-c", "from farm.cli import main; main()", "worker", "--device", device, *extra]


@dataclass
class Child:
    """One supervised worker process: its device, command line, process and restart state."""

    device: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    crashes_in_row: int = 0
    #: When to start it again (None: not scheduled).
    restart_at: float | None = None
    done: bool = False
    last_status: int | None = None
    history: list[int] = field(default_factory=list)


class Supervisor:
    """Starts one child per device and keeps them running (see the module docstring)."""

    def __init__(
        self,
        children: Sequence[tuple[str, list[str]]],
        *,
        backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
        stable_after_s: float = DEFAULT_STABLE_AFTER_S,
        popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not children:
            raise NoDevices("nothing to supervise")
        self.children = [Child(device, list(argv)) for device, argv in children]
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.stable_after_s = stable_after_s
        self._popen = popen
        self._clock = clock
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.stopping = False

    def backoff(self, crashes_in_row: int) -> float:
        """Seconds before restarting a child after its ``crashes_in_row``-th crash in a row."""
        return float(min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(0, crashes_in_row - 1)))

    def _start(self, child: Child) -> None:
        child.proc = self._popen(child.argv)
        child.started_at = self._clock()
        child.starts += 1
        child.restart_at = None
        log.info("supervisor: started %s (pid %d, start #%d)", child.device, child.proc.pid, child.starts)

    def _reap(self, child: Child) -> None:
        assert child.proc is not None
        status = child.proc.poll()
        if status is None:
            return
        ran = self._clock() - child.started_at
        child.proc = None
        child.last_status = status
        child.history.append(status)
        if self.stopping or status == 0:
            child.done = True
            log.info("supervisor: %s exited with status %d", child.device, status)
            return
        child.crashes_in_row = 1 if ran >= self.stable_after_s else child.crashes_in_row + 1
        delay = self.backoff(child.crashes_in_row)
        child.restart_at = self._clock() + delay
        log.warning("supervisor: %s crashed (status %d after %.1f s); restarting in %.1f s",
                    child.device, status, ran, delay)

    def step(self) -> bool:
        """Look at the children once: reap exits, start due restarts. False once all are done."""
        with self._lock:
            now = self._clock()
            for child in self.children:
                if child.proc is not None:
                    self._reap(child)
                if child.proc is None and not child.done and child.restart_at is not None:
                    if self.stopping:
                        child.done = True
                    elif now >= child.restart_at:
                        self._start(child)
            return not all(c.done for c in self.children)

    def run(self, *, install_signals: bool = True, poll_s: float = POLL_S) -> int:
        """Start every child and supervise until all have exited.

        Returns 0 when every child ended cleanly (or was stopped by a forwarded signal), 1
        otherwise.
        """
        previous: dict[int, Any] = {}
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[int(sig)] = signal.signal(sig, self._on_signal)
        try:
            with self._lock:
                for child in self.children:
                    self._start(child)
            while self.step():
                self._wake.wait(poll_s)
                self._wake.clear()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        clean = all(c.last_status == 0 or (self.stopping and c.last_status is not None) for c in self.children)
        return 0 if clean else 1

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop(signum)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop restarting and forward ``signum`` to every running child."""
        self.stopping = True
        for child in self.children:
            proc = child.proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)
        self._wake.set()
