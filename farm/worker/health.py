"""``farm health``: can this node work right now? The ledger, the broker, the device, the model weights.

A worker container's healthcheck (docker-compose.yml) runs it. Each check is one small probe:

* ``ledger`` — one round trip to the ledger database (:meth:`farm.ledger.Ledger.ping`);
* ``broker`` — the broker answers (Redis: ``PING``; :func:`farm.queue.enqueue.broker_reachable`);
* ``device`` — ``cpu`` always; ``cuda:N``: torch sees CUDA and at least N + 1 devices (torch is
  imported here, inside the check, and no CUDA context is created);
* ``models`` — every model the worker serves (``FARM_WORKER_MODELS``, else every model whose weights
  are present) has complete weights under ``FARM_MODEL_DIR`` (:func:`farm.worker.main.serving_models`).

The checks run side by side, each in a daemon thread with the same deadline, so a hung connection
cannot hold the healthcheck past ``timeout_s``: a check that has not answered by then fails. No
check prints a secret: URLs are shown with their password hidden.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from farm.settings import Settings, redacted_url

#: Seconds every check may take (``farm health --timeout``).
DEFAULT_HEALTH_TIMEOUT_S = 10.0
#: The checks, in the order they are reported.
CHECK_NAMES: tuple[str, ...] = ("ledger", "broker", "device", "models")
_CUDA = re.compile(r"cuda:(\d+)")


class CheckFailed(Exception):
    """A check's probe answered, and the answer is bad (the message says what)."""


@dataclass(frozen=True)
class CheckResult:
    """One check: its name, whether it passed, what it found (or why it failed), and how long it took."""

    name: str
    ok: bool
    detail: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class HealthReport:
    """Every check's result; healthy when all passed."""

    checks: tuple[CheckResult, ...]

    @property
    def healthy(self) -> bool:
        """True when every check passed."""
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"healthy": self.healthy, "checks": [c.to_dict() for c in self.checks]}

    def lines(self) -> list[str]:
        """One line per check: ``ok``/``FAIL``, its name, what it found."""
        return [f"{'ok' if c.ok else 'FAIL':<4}  {c.name:<6}  {c.detail}" for c in self.checks]


def check_ledger(settings: Settings) -> str:
    """One round trip to the ledger."""
    from farm.ledger import Ledger

    ledger = Ledger(settings.ledger_url, pre_ping=False)
    try:
        ledger.ping()
    finally:
        ledger.close()
    return f"{ledger.display_url} answered"


def check_broker(settings: Settings, timeout_s: float) -> str:
    """The broker answers within ``timeout_s``."""
    from farm.queue.app import get_app
    from farm.queue.enqueue import broker_reachable

    url = redacted_url(settings.broker)
    if not broker_reachable(get_app(settings), timeout_s):
        raise CheckFailed(f"{url} did not answer")
    return f"{url} answered"


def check_device(device: str) -> str:
    """``cpu``, or ``cuda:N`` that torch can see (CUDA available, more than N devices)."""
    if device == "cpu":
        return "cpu"
    match = _CUDA.fullmatch(device)
    if match is None:
        raise CheckFailed(f"unknown device {device!r}: cpu or cuda:N")
    index = int(match.group(1))
    import torch

    if not torch.cuda.is_available():
        raise CheckFailed(f"{device}: torch {torch.__version__} sees no CUDA device "
                          f"(built for CUDA {torch.version.cuda or 'none: a CPU build'})")
    count = int(torch.cuda.device_count())
    if index >= count:
        raise CheckFailed(f"{device}: torch sees {count} CUDA device(s)")
    return f"{device} ({count} CUDA device(s) visible, torch {torch.__version__})"


def check_models(settings: Settings, models: str | None) -> str:
    """Every model this worker serves has complete weights."""
    from farm.errors import InvalidInput
    from farm.worker.main import serving_models

    try:
        served = serving_models(models, settings)
    except InvalidInput as exc:
        raise CheckFailed("; ".join(p.message for p in exc.problems)) from None
    return f"serves {', '.join(served)} (weights under {settings.models_path})"


def _run(name: str, probe: Callable[[], str], results: dict[str, CheckResult]) -> None:
    start = time.monotonic()
    try:
        detail, ok = probe(), True
    except CheckFailed as exc:
        detail, ok = str(exc), False
    except Exception as exc:  # any error is this check's failure, reported by type (messages may be long)
        detail, ok = f"{type(exc).__name__}: {_first_line(exc)}", False
    results[name] = CheckResult(name, ok, detail, time.monotonic() - start)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact_text(text[0]) if text else "no message"


def redact_text(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@`` in it hidden."""
    return re.sub(r"(://[^/\s:@]*:)[^@\s/]+@", r"\1***@", text)


def run_checks(settings: Settings, *, device: str, models: str | None = None,
               timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S) -> HealthReport:
    """Run every check side by side; one that has not answered within ``timeout_s`` fails."""
    probes: dict[str, Callable[[], str]] = {
        "ledger": lambda: check_ledger(settings),
        "broker": lambda: check_broker(settings, timeout_s),
        "device": lambda: check_device(device),
        "models": lambda: check_models(settings, models),
    }
    results: dict[str, CheckResult] = {}
    threads = [threading.Thread(target=_run, args=(name, probe, results), name=f"farm-health-{name}", daemon=True)
               for name, probe in probes.items()]
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    checks = tuple(results.get(name) or CheckResult(name, False, f"no answer within {timeout_s:g} s", timeout_s)
                   for name in CHECK_NAMES)
    return HealthReport(checks)
