"""The systemd units of ops/systemd/ run real farm commands, safely.

``systemd-analyze verify`` (package systemd; ``scripts/os-tools.sh`` installs it where it is
missing) checks every unit as systemd would load it — unknown keys, bad values, a bad specifier —
on a copy whose ``/opt/farm/venv/bin/farm`` is a stub (verify needs the executable to exist).
Each ``ExecStart`` is then checked against the farm CLI: the command and every option exist.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from farm.cli import cli

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "ops" / "systemd"
FARM = "/opt/farm/venv/bin/farm"
#: Long-running processes of a control node, and the one-shot migration.
CONTROL_UNITS = {
    "farm-api.service": ["api"],
    "farm-flower.service": ["flower"],
    "farm-migrate.service": ["db", "upgrade"],
}
WORKER_UNIT = "farm-worker@.service"
#: Seconds between the worker's --stop-timeout and SIGKILL: it hands its job back and exits.
STOP_MARGIN_S = 30
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes"}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with all its values in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        assert not line.endswith("\\"), f"{path.name}: keep each setting on one line"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, (section, key, values)
    return values[0]


def unit_files() -> list[Path]:
    return sorted(UNITS.glob("*.service"))


def seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    return float(number) * units[value[len(number):]]


def test_the_units_are_there() -> None:
    assert {p.name for p in unit_files()} == {WORKER_UNIT, *CONTROL_UNITS}


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed: run scripts/os-tools.sh (Debian package systemd)")
    stub = tmp_path / "farm"
    stub.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stub.chmod(0o755)
    names: list[str] = []
    for path in unit_files():
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8").replace(FARM, str(stub)), encoding="utf-8")
        # a template is verified through instances: two GPUs
        names += [path.name.replace("@", f"@{n}") for n in (0, 7)] if "@." in path.name else [path.name]
    out = subprocess.run([analyze, "verify", "--man=no", *names], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60, check=False)
    # a bad value or an unknown key is only a warning for systemd (exit 0): any word about our units fails
    about_us = [line for line in (out.stdout + out.stderr).splitlines()
                if str(tmp_path) in line or any(n.split("@")[0] in line for n in names)]
    assert out.returncode == 0 and not about_us, out.stdout + out.stderr


def farm_words(unit: dict[str, dict[str, list[str]]], instance: str = "0") -> list[str]:
    words = shlex.split(one(unit, "Service", "ExecStart").replace("%i", instance))
    assert words[0] == FARM, f"ExecStart runs {words[0]}, not {FARM}"
    return ["farm", *words[1:]]


def resolve(words: list[str]) -> tuple[list[str], click.Command, dict[str, str | None]]:
    """(subcommand path, click command, {option: value}) of ``farm ...`` words."""
    path: list[str] = []
    command: click.Command = cli
    options: dict[str, str | None] = {}
    rest = words[1:]
    while rest:
        word = rest.pop(0)
        if word.startswith("-"):
            name, eq, value = word.partition("=")
            options[name] = value if eq else (rest.pop(0) if rest and not rest[0].startswith("-") else None)
        elif isinstance(command, click.Group) and not options:
            sub = command.commands.get(word)
            assert sub is not None, f"`farm {' '.join([*path, word])}` is not a farm command"
            path.append(word)
            command = sub
        else:
            pytest.fail(f"unexpected argument {word!r} in {words}")
    return path, command, options


@pytest.mark.parametrize("name", [WORKER_UNIT, *CONTROL_UNITS])
def test_every_farm_command_and_option_exists(name: str) -> None:
    path, command, options = resolve(farm_words(parse_unit(UNITS / name)))
    if name in CONTROL_UNITS:
        assert path == CONTROL_UNITS[name]
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    params = {opt: param for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for option, value in options.items():
        assert option in params, f"{name}: `farm {' '.join(path)}` has no option {option}"
        param = params[option]
        if isinstance(param, click.Option) and not param.is_flag:
            assert value is not None, f"{name}: {option} needs a value"
            param.type.convert(value, param, None)  # raises on a value the option refuses


@pytest.mark.parametrize("name", [p.name for p in unit_files()])
def test_every_unit_runs_unprivileged_with_its_secrets_in_a_file(name: str) -> None:
    unit = parse_unit(UNITS / name)
    service = unit["Service"]
    assert one(unit, "Service", "User") not in ("root", "0") and one(unit, "Service", "Group")
    assert "DynamicUser" not in service, "outputs and state need a stable owner"
    # each unit reads the shared settings (optional, no secrets) and its own role's secrets file only
    role = {"farm-worker@.service": "worker", "farm-api.service": "api", "farm-flower.service": "flower",
            "farm-migrate.service": "migrate"}[name]
    assert service["EnvironmentFile"] == ["-/etc/farm/farm.env", f"/etc/farm/{role}.env"]
    for setting in service.get("Environment", []):
        key = setting.split("=", 1)[0]
        assert not any(word in key for word in ("TOKEN", "PASSWORD", "SECRET", "BASIC_AUTH", "DATABASE_URL",
                                                "BROKER_URL")), f"{name}: {key} belongs in the env file"
    for key, value in HARDENING.items():
        assert one(unit, "Service", key) == value, f"{name}: {key}={value}"
    if one(unit, "Service", "Type") != "oneshot":
        assert one(unit, "Service", "Restart") == "on-failure"
        assert one(unit, "Service", "KillSignal") == "SIGTERM"
        assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_worker_is_one_instance_per_gpu_and_stops_gracefully() -> None:
    unit = parse_unit(UNITS / WORKER_UNIT)
    words = farm_words(unit, instance="3")
    path, _, options = resolve(words)
    assert path == ["worker"] and options["--device"] == "cuda:3"
    assert "--devices" not in options, "one unit instance per GPU, not the supervisor"
    stop_timeout = float(options["--stop-timeout"] or "nan")
    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= stop_timeout + STOP_MARGIN_S
    # SIGTERM to the worker alone (it hands back its job); ffmpeg children are not killed under it
    assert one(unit, "Service", "KillMode") == "mixed"
    # the GPU device nodes stay visible
    service = unit["Service"]
    for hiding in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock", "MemoryDenyWriteExecute"):
        assert hiding not in service or service[hiding] == ["no"], f"{hiding} would break CUDA"
    # each GPU its own state (staging) directory: a starting worker clears only its own stale staging
    assert "%i" in one(unit, "Service", "StateDirectory")
    data_dirs = [e for e in service["Environment"] if e.startswith("FARM_DATA_DIR=")]
    assert data_dirs == ["FARM_DATA_DIR=/var/lib/farm/gpu%i"]
