"""The ops files agree with the code.

docker-compose.yml runs real farm commands with real options and real settings, holds no secret,
and the Prometheus config and alert rules reference only metrics the code exports.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from click.testing import CliRunner

from farm.cli import cli
from farm.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "ops" / "prometheus.yml"
ALERTS = ROOT / "ops" / "alerts.yml"
SECRET_EXAMPLES = ROOT / "ops" / "secrets.example"
SETTING_VARS = {f"FARM_{name.upper()}" for name in Settings.model_fields}
SECRET_KEY = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|BASIC_AUTH|API_KEY|PRIVATE", re.IGNORECASE)
#: PromQL words that are not metric names.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "clamp_min", "clamp_max", "clamp",
    "abs", "absent", "absent_over_time", "changes", "resets", "histogram_quantile", "time", "vector", "scalar",
    "label_replace", "label_join", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time",
    "count_over_time", "last_over_time", "round", "ceil", "floor", "sort", "sort_desc", "timestamp", "inf", "nan",
}
#: Metrics Prometheus makes itself (never exported by the code).
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load(COMPOSE)
    assert isinstance(data, dict) and data.get("services")
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def command_words(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    if cmd is None:
        return []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {k: (v if sep else None) for k, sep, v in (item.partition("=") for item in env)}
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


# -- commands -------------------------------------------------------------------------------------


def resolve_command(words: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """(subcommand path, the click command, the --options used) of ``farm ...`` words."""
    assert words[0] == "farm", words
    path: list[str] = []
    command: click.Command = cli
    options: list[str] = []
    for word in words[1:]:
        if word.startswith("-"):
            options.append(word.split("=", 1)[0])
        elif isinstance(command, click.Group) and not options:
            sub = command.commands.get(word)
            assert sub is not None, f"`farm {' '.join([*path, word])}` is not a farm command"
            path.append(word)
            command = sub
    return path, command, options


def farm_commands(compose: dict[str, Any]) -> dict[str, list[str]]:
    return {name: words for name, s in services(compose).items() if (words := command_words(s)) and words[0] == "farm"}


def test_every_farm_command_and_option_exists(compose: dict[str, Any]) -> None:
    commands = farm_commands(compose)
    assert {"migrate", "api", "flower", "worker-gpu0", "worker-gpu1"} <= set(commands)
    runner = CliRunner()
    for service, words in commands.items():
        path, command, options = resolve_command(words)
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (service, result.output)
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for option in options:
            assert option in known, f"{service}: `farm {' '.join(path)}` has no option {option}"
            assert option in result.output, (service, option)


def test_workers_one_per_gpu_with_a_device_reservation(compose: dict[str, Any]) -> None:
    gpu_ids: list[str] = []
    for name, service in services(compose).items():
        words = command_words(service)
        if words[:2] != ["farm", "worker"] or "cuda" not in " ".join(words):
            continue
        assert words[words.index("--device") + 1] == "cuda:0", name  # the container sees one GPU
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and "gpu" in devices[0]["capabilities"], name
        assert len(devices[0]["device_ids"]) == 1, name
        gpu_ids.extend(devices[0]["device_ids"])
    assert len(gpu_ids) >= 2 and len(set(gpu_ids)) == len(gpu_ids)


def test_redis_keeps_messages(compose: dict[str, Any]) -> None:
    words = command_words(services(compose)["redis"])
    assert words[0] == "redis-server"
    text = " ".join(words)
    assert "--appendonly yes" in text
    assert "--maxmemory-policy noeviction" in text


# -- settings and secrets ---------------------------------------------------------------------------


def test_every_farm_variable_is_a_setting(compose: dict[str, Any]) -> None:
    used: set[str] = set()
    for service in services(compose).values():
        used |= set(environment(service))
    used |= set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", COMPOSE.read_text(encoding="utf-8")))
    for example in SECRET_EXAMPLES.glob("*.env"):
        used |= {line.split("=", 1)[0] for line in example.read_text().splitlines() if "=" in line
                 and not line.startswith("#")}
    farm_vars = {v for v in used if v.startswith("FARM_")}
    assert farm_vars, "the compose file configures no farm setting"
    unknown = farm_vars - SETTING_VARS
    assert not unknown, f"not farm settings (farm/settings.py): {sorted(unknown)}"


def test_no_secret_values_in_the_compose_file(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    for name, service in services(compose).items():
        for key, value in environment(service).items():
            assert not SECRET_KEY.search(key), f"{name}: secret {key} must come from an env_file, not inline"
            if value and "://" in value:
                assert urlsplit(value).password is None, f"{name}: {key} holds a password"
    # nowhere else either (commands, healthchecks, labels): no secret-named key with a value
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        assert not re.search(r"[A-Z_]*(TOKEN|PASSWORD|SECRET|BASIC_AUTH)[A-Z_]*\s*[:=]\s*\S", code), line
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "a URL with a password"


def test_secret_files_are_git_ignored(compose: dict[str, Any]) -> None:
    files = [f for s in services(compose).values() for f in (s.get("env_file") or [])]
    files += [s["file"] for s in (compose.get("secrets") or {}).values()]
    assert "ops/secrets/farm.env" in files and "ops/secrets/api_token" in files
    for path in files:
        assert path.startswith("ops/secrets/"), path
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{path} is not git-ignored"
        example = SECRET_EXAMPLES / Path(path).name
        assert example.is_file(), f"no example for {path}"


def test_minio_is_the_output_store(compose: dict[str, Any]) -> None:
    """MinIO (a pinned release, with a healthcheck) holds the outputs; every farm process is pointed at it."""
    all_services = services(compose)
    minio = all_services["minio"]
    image = minio["image"]
    assert image.rpartition(":")[2].startswith("RELEASE."), f"MinIO's image is not pinned to a release: {image}"
    assert minio["healthcheck"]["test"] and "ops/secrets/minio.env" in minio["env_file"]
    setup = all_services["minio-setup"]
    assert setup["image"] == image and setup["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(command_words(setup))
    # the keys reach the shell from the env files ($$: compose's escape for $), never inline
    assert "mc mb" in script and '"$$FARM_S3_SECRET_ACCESS_KEY"' in script
    for name, words in farm_commands(compose).items():
        env = environment(all_services[name])
        settings = Settings(**{k.removeprefix("FARM_").lower(): re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v)
                               for k, v in env.items() if k.startswith("FARM_") and v is not None})
        assert settings.output_store_kind == "s3", name
        assert env["FARM_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert "ops/secrets/s3.env" in all_services[name]["env_file"], name
        if name != "migrate":
            assert "minio-setup" in all_services[name].get("depends_on", {}) or name == "flower", name
    assert environment(all_services["api"])["FARM_S3_PUBLIC_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    example = (SECRET_EXAMPLES / "s3.env").read_text()
    assert "FARM_S3_ACCESS_KEY_ID=" in example and "FARM_S3_SECRET_ACCESS_KEY=CHANGE-ME" in example


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


# -- Prometheus and alerts --------------------------------------------------------------------------


def exported_metrics() -> set[str]:
    """Metric names the code defines (farm/api and farm/metrics*).

    Each with the suffixes Prometheus adds for counters, summaries and histograms.
    """
    sources = [*ROOT.joinpath("farm", "api").glob("*.py"), *ROOT.joinpath("farm").rglob("metrics*.py")]
    pattern = re.compile(
        r"(\w*(?:Counter|Gauge|Histogram|Summary|Info|Enum|MetricFamily))\(\s*[\"']([a-zA-Z_:][\w:]*)[\"']"
    )
    names: set[str] = set()
    for source in sources:
        for kind, name in pattern.findall(source.read_text(encoding="utf-8")):
            names.add(name)
            if "Counter" in kind:
                names.add(f"{name}_total")
            if "Histogram" in kind or "Summary" in kind:
                names |= {f"{name}_count", f"{name}_sum", f"{name}_bucket"}
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, strings, durations and words removed)."""
    stripped = re.sub(r"\{[^}]*\}", "", expr)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]?", w)}


def test_the_code_exports_what_the_docs_list() -> None:
    from farm.metrics import METRIC_NAMES

    exported = exported_metrics()
    assert set(METRIC_NAMES) <= exported
    assert {"farm_jobs", "farm_queue_depth", "farm_workers", "farm_recent_render_seconds"} <= exported


def test_alert_rules_parse_and_use_only_exported_metrics() -> None:
    rules = [r for group in load(ALERTS)["groups"] for r in group["rules"]]
    names = {r["alert"] for r in rules}
    assert {"FarmWorkerCircuitOpen", "FarmQueueStalled", "FarmHighFailureRate", "FarmNoWorkersAlive"} <= names
    allowed = exported_metrics() | PROMETHEUS_OWN
    for rule in rules:
        assert rule["labels"]["severity"] in ("page", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= allowed, f"{rule['alert']} uses metrics nobody exports: {sorted(used - allowed)}"


def test_metric_name_extraction() -> None:
    expr = 'sum(increase(farm_jobs_finished_total{status=~"a|b"}[30m])) / clamp_min(sum(farm_x), 1) > 0.2'
    assert metric_names(expr) == {"farm_jobs_finished_total", "farm_x"}
    assert metric_names('max by (worker) (farm_worker_state{state="circuit_open"}) == 1') == {"farm_worker_state"}


def test_prometheus_scrapes_the_api_with_a_token_file(compose: dict[str, Any]) -> None:
    config = load(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"farm-api", "flower", "farm-workers"} <= set(jobs)
    api = jobs["farm-api"]
    assert api["authorization"]["type"] == "Bearer"
    assert api["authorization"]["credentials_file"].startswith("/run/secrets/")
    assert "credentials" not in api["authorization"]
    assert Path(config["rule_files"][0]).name == ALERTS.name
    known = set(services(compose))
    for job in jobs.values():
        for target in (t for sc in job["static_configs"] for t in sc["targets"]):
            host, _, port = target.partition(":")
            assert host in known, f"{job['job_name']} scrapes {host}, not a compose service"
            assert port.isdigit()
    api_port = farm_commands(compose)["api"]
    assert api["static_configs"][0]["targets"] == [f"api:{api_port[api_port.index('--port') + 1]}"]
    mounted = " ".join(services(compose)["prometheus"]["volumes"])
    assert "ops/prometheus.yml" in mounted and "ops/alerts.yml" in mounted
    assert services(compose)["prometheus"]["secrets"] == [api["authorization"]["credentials_file"].split("/")[-1]]
