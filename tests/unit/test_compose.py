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
#: `NAME_FILE: /run/secrets/x` (or Grafana's `NAME__FILE`): a variable that names a compose secret's
#: file, which the program reads itself.
SECRET_FILE_REF = re.compile(r"[A-Z0-9_]+_FILE: /run/secrets/[\w.-]+")
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


def test_redis_keeps_messages_and_requires_a_password(compose: dict[str, Any]) -> None:
    """AOF on, noeviction, and a password (from its secret, on stdin: on no command line).

    tests/integration/deploy/test_redis_secret.py runs this very command.
    """
    redis = services(compose)["redis"]
    words = command_words(redis)
    assert words[:2] == ["sh", "-c"]
    script = words[2]
    server = script.splitlines()[0]
    assert server.startswith("exec docker-entrypoint.sh redis-server ")  # the image's entrypoint drops root
    assert "--appendonly yes" in server and "--maxmemory-policy noeviction" in server
    assert server.endswith(" - <<EOF"), "the password is configuration read on stdin (`-` last)"
    assert "requirepass $$(cat /run/secrets/redis_password)" in script
    assert "requirepass" not in server
    assert redis["secrets"] == ["redis_password"]
    check = " ".join(redis["healthcheck"]["test"])
    assert "REDISCLI_AUTH=" in check and "/run/secrets/redis_password" in check and "PONG" in check


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
            if SECRET_FILE_REF.fullmatch(f"{key}: {value}"):
                continue  # the path of a compose secret's file (..._PASSWORD_FILE), not a secret
            assert not SECRET_KEY.search(key), f"{name}: secret {key} must come from an env_file, not inline"
            if value and "://" in value:
                assert urlsplit(value).password is None, f"{name}: {key} holds a password"
    # nowhere else either (commands, healthchecks, labels): no secret-named key with a value
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        if SECRET_FILE_REF.fullmatch(code.strip()):
            continue
        assert not re.search(r"[A-Z_]*(TOKEN|PASSWORD|SECRET|BASIC_AUTH)[A-Z_]*\s*[:=]\s*\S", code), line
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "a URL with a password"


def test_secret_files_are_git_ignored(compose: dict[str, Any]) -> None:
    files = [f for s in services(compose).values() for f in (s.get("env_file") or [])]
    files += [s["file"] for s in (compose.get("secrets") or {}).values()]
    assert {"ops/secrets/api_token", "ops/secrets/broker_url", "ops/secrets/database_url"} <= set(files)
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
        # (FARM_*_FILE name files that exist only in the container)
        settings = Settings(**{k.removeprefix("FARM_").lower(): re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v)
                               for k, v in env.items()
                               if k.startswith("FARM_") and not k.endswith("_FILE") and v is not None})
        assert settings.output_store_kind == "s3", name
        assert env["FARM_S3_ENDPOINT_URL"] == "http://minio:9000", name
        # the store's key only where the store is used: workers write, the API signs download URLs
        uses_store = name == "api" or words[:2] == ["farm", "worker"]
        assert ("ops/secrets/s3.env" in (all_services[name].get("env_file") or [])) == uses_store, name
        if uses_store:
            assert "minio-setup" in all_services[name].get("depends_on", {}), name
    assert environment(all_services["api"])["FARM_S3_PUBLIC_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    example = (SECRET_EXAMPLES / "s3.env").read_text()
    assert "FARM_S3_ACCESS_KEY_ID=" in example and "FARM_S3_SECRET_ACCESS_KEY=CHANGE-ME" in example


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


# -- images, secrets per service, healthchecks, logs ------------------------------------------------

#: The secrets each farm service gets, exactly: least privilege (a worker never holds the API token,
#: Flower's credentials or the ledger owner's URL; only migrate holds the owner's).
FARM_SECRETS = {
    "migrate": {"database_owner_url"},
    "api": {"farm_api_token", "database_url", "broker_url"},
    "flower": {"flower_basic_auth", "broker_url"},
    "worker": {"database_url", "broker_url"},
}
#: The FARM_*_FILE variable that names each secret to farm.
SECRET_SETTING = {
    "database_owner_url": "FARM_DATABASE_URL_FILE", "database_url": "FARM_DATABASE_URL_FILE",
    "broker_url": "FARM_BROKER_URL_FILE", "farm_api_token": "FARM_API_TOKEN_FILE",
    "flower_basic_auth": "FARM_FLOWER_BASIC_AUTH_FILE",
}
#: Secrets (or env-file variables) no worker may see.
NOT_FOR_WORKERS = {"farm_api_token", "flower_basic_auth", "database_owner_url", "FARM_API_TOKEN",
                   "FARM_API_TOKEN_FILE", "FARM_FLOWER_BASIC_AUTH", "FARM_FLOWER_BASIC_AUTH_FILE"}


def is_worker(words: list[str]) -> bool:
    return words[:2] == ["farm", "worker"]


def gpu_worker(words: list[str]) -> bool:
    return is_worker(words) and "--device" in words and words[words.index("--device") + 1].startswith("cuda")


def env_file_keys(service: dict[str, Any]) -> set[str]:
    """Variables the service's env files set (read from their examples)."""
    keys: set[str] = set()
    for path in service.get("env_file") or []:
        example = SECRET_EXAMPLES / Path(path).name
        keys |= {line.split("=", 1)[0] for line in example.read_text().splitlines() if "=" in line
                 and not line.startswith("#")}
    return keys


def test_each_service_runs_its_image(compose: dict[str, Any]) -> None:
    """GPU workers: the GPU image (Dockerfile.gpu); migrate, api, flower and the CPU worker: the CPU image."""
    commands = farm_commands(compose)
    assert any(gpu_worker(w) for w in commands.values()) and any(not gpu_worker(w) for w in commands.values())
    for name, words in commands.items():
        service = services(compose)[name]
        want = ("farm:gpu", "Dockerfile.gpu") if gpu_worker(words) else ("farm:cpu", "Dockerfile")
        assert (service["image"], service["build"]["dockerfile"]) == want, name
        assert service["build"]["context"] == "." and (ROOT / want[1]).is_file()
    for name, service in services(compose).items():  # pulled images: a version tag (farm's are built here)
        if "build" in service:
            continue
        image = str(service.get("image", ""))
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: image {image!r} is not pinned to a version"


def test_each_farm_service_gets_only_its_secrets(compose: dict[str, Any]) -> None:
    declared = set(compose["secrets"])
    for name, service in services(compose).items():
        assert set(service.get("secrets") or []) <= declared, f"{name} uses an undeclared secret"
    for name, words in farm_commands(compose).items():
        service = services(compose)[name]
        secrets = set(service.get("secrets") or [])
        role = "worker" if is_worker(words) else name
        assert secrets == FARM_SECRETS[role], name
        env = environment(service)
        for secret in secrets:  # each one named to farm by its FARM_*_FILE setting, at its mount point
            assert env[SECRET_SETTING[secret]] == f"/run/secrets/{secret}", (name, secret)
        # no secret as a plain variable either (inline or from an env file), but the store key's file
        plain = {k for k in (set(env) | env_file_keys(service)) if SECRET_KEY.search(k) and not k.endswith("_FILE")}
        assert plain <= {"FARM_S3_SECRET_ACCESS_KEY"}, (name, plain)
        if role == "worker":
            assert not (secrets | set(env) | env_file_keys(service)) & NOT_FOR_WORKERS, name
    owners = [n for n, s in services(compose).items() if "database_owner_url" in (s.get("secrets") or [])]
    assert owners == ["migrate"]


def test_the_ledger_roles_and_their_urls_agree(compose: dict[str, Any]) -> None:
    """Postgres makes the roles (init script, passwords from secrets) that the URL examples name."""
    postgres = services(compose)["postgres"]
    assert set(postgres["secrets"]) == {"postgres_password", "pg_owner_password", "pg_app_password"}
    assert environment(postgres)["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    mounts = [v for v in postgres["volumes"] if "/docker-entrypoint-initdb.d/" in v]
    assert mounts and mounts[0].startswith("./ops/postgres/init-roles.sh:") and mounts[0].endswith(":ro")
    script = (ROOT / "ops" / "postgres" / "init-roles.sh").read_text()
    assert "owner=${FARM_OWNER_ROLE:-farm_owner}" in script and "app=${FARM_APP_ROLE:-farm_app}" in script
    owner_url = urlsplit((SECRET_EXAMPLES / "database_owner_url").read_text().strip())
    app_url = urlsplit((SECRET_EXAMPLES / "database_url").read_text().strip())
    assert (owner_url.username, app_url.username) == ("farm_owner", "farm_app")
    assert owner_url.hostname == app_url.hostname == "postgres" and owner_url.path == app_url.path == "/farm"
    broker = urlsplit((SECRET_EXAMPLES / "broker_url").read_text().strip())
    assert (broker.scheme, broker.hostname, broker.password) == ("redis", "redis", "CHANGE-ME")


def healthcheck_words(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), test
    return [str(w) for w in test[1:]] if test[0] == "CMD" else ["sh", "-c", str(test[1])]


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if service.get("restart") == "no":  # one-shot: minio-setup, migrate
            continue
        assert "healthcheck" in service and healthcheck_words(service), f"{name} has no healthcheck"
    api = " ".join(healthcheck_words(services(compose)["api"]))
    assert "/readyz" in api


def test_workers_check_themselves_with_farm_health(compose: dict[str, Any]) -> None:
    """A worker's healthcheck is ``farm health`` (real options) on the worker's own device."""
    runner = CliRunner()
    workers = {n: w for n, w in farm_commands(compose).items() if is_worker(w)}
    assert len(workers) >= 3
    for name, words in workers.items():
        check = healthcheck_words(services(compose)[name])
        path, command, options = resolve_command(check)
        assert path == ["health"], name
        known = {opt for param in command.params for opt in param.opts}
        assert set(options) <= known, name
        assert runner.invoke(cli, ["health", "--help"]).exit_code == 0
        assert check[check.index("--device") + 1] == words[words.index("--device") + 1], name
        timeout = float(check[check.index("--timeout") + 1])
        assert timeout < float(str(services(compose)[name]["healthcheck"]["timeout"]).rstrip("s")), name


def test_every_service_rotates_its_logs(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        logging = service.get("logging")
        assert logging and logging["driver"] == "json-file", f"{name} has no rotated log"
        assert {"max-size", "max-file"} <= set(logging["options"]), name


def test_flower_keeps_its_state_on_a_volume(compose: dict[str, Any]) -> None:
    flower = services(compose)["flower"]
    db = Path(environment(flower)["FARM_FLOWER_DB"] or "")
    volumes = {v.split(":")[1]: v.split(":")[0] for v in flower["volumes"]}
    assert str(db.parent) in volumes and volumes[str(db.parent)] in compose["volumes"], "not on a named volume"
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):  # exists in the image, owned by farm: the volume is too
        assert str(db.parent) in (ROOT / dockerfile).read_text(), dockerfile


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
    # every worker of every profile, at its metrics port
    scraped = {t for sc in jobs["farm-workers"]["static_configs"] for t in sc["targets"]}
    for name, words in farm_commands(compose).items():
        if words[:2] == ["farm", "worker"]:
            port = environment(services(compose)[name])["FARM_WORKER_METRICS_PORT"]
            assert f"{name}:{port}" in scraped, f"Prometheus does not scrape {name}"
    mounted = " ".join(services(compose)["prometheus"]["volumes"])
    assert "ops/prometheus.yml" in mounted and "ops/alerts.yml" in mounted
    assert services(compose)["prometheus"]["secrets"] == [api["authorization"]["credentials_file"].split("/")[-1]]
