"""``farm health`` without services: the embedded ledger and broker, the device and model checks, the deadline.

tests/integration/deploy/test_health_check.py runs it against Postgres and a real Redis (up, then
stopped).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from farm.cli import cli
from farm.settings import Settings, reset_settings_cache
from farm.worker import health


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in ("FARM_DATABASE_URL", "FARM_BROKER_URL", "FARM_DATABASE_URL_FILE", "FARM_BROKER_URL_FILE",
                 "FARM_DEVICE", "FARM_WORKER_MODELS", "FARM_MODEL_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FARM_DATA_DIR", str(tmp_path))
    reset_settings_cache()
    yield tmp_path
    reset_settings_cache()


def run(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["health", "--json", *args])
    return result.exit_code, json.loads(result.output)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_healthy_on_the_embedded_default(embedded: Path) -> None:
    code, report = run()
    assert code == 0 and report["healthy"] is True
    checks = by_name(report)
    assert list(checks) == list(health.CHECK_NAMES)
    assert checks["device"]["detail"] == "cpu" and "tiny" in checks["models"]["detail"]
    result = CliRunner().invoke(cli, ["health"])
    assert result.exit_code == 0
    assert [line.split()[:2] for line in result.output.splitlines()] == [["ok", n] for n in health.CHECK_NAMES]


def test_a_gpu_this_torch_cannot_see_fails_the_device_check(embedded: Path) -> None:
    code, report = run("--device", "cuda:0")  # the test machine's torch is the CPU build
    assert code == 1 and report["healthy"] is False
    checks = by_name(report)
    assert not checks["device"]["ok"] and "cuda:0" in checks["device"]["detail"]
    assert all(checks[n]["ok"] for n in ("ledger", "broker", "models"))
    assert not by_name(run("--device", "gpu0")[1])["device"]["ok"]


def test_missing_weights_fail_the_models_check(embedded: Path) -> None:
    code, report = run("--models", "wan2.2-t2v-a14b")
    detail = by_name(report)["models"]["detail"]
    assert code == 1 and "wan2.2-t2v-a14b" in detail and "Wan2.2-T2V-A14B-Diffusers" in detail


def test_a_hung_check_fails_at_the_deadline(embedded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hang(_settings: Settings, _timeout_s: float) -> str:
        release.wait(30)
        return "too late"

    monkeypatch.setattr(health, "check_broker", hang)
    start = time.monotonic()
    try:
        report = health.run_checks(Settings(data_dir=embedded), device="cpu", timeout_s=0.5)
    finally:
        release.set()
    assert time.monotonic() - start < 5
    checks = {c.name: c for c in report.checks}
    assert not report.healthy and not checks["broker"].ok and checks["broker"].detail == "no answer within 0.5 s"
    assert checks["ledger"].ok and checks["device"].ok


def test_errors_never_show_a_password() -> None:
    said = health.redact_text("cannot reach redis://:hunter2@redis:6379/0 now")
    assert said == "cannot reach redis://:***@redis:6379/0 now"
    assert health.redact_text("postgresql://farm_app:pw@db/farm") == "postgresql://farm_app:***@db/farm"
