"""Alerting: the rules, their unit tests, their runbook, and Alertmanager's routing.

Runs Prometheus' and Alertmanager's own checkers — ``promtool`` (Debian package ``prometheus``) and
``amtool`` (``prometheus-alertmanager``) — which ``scripts/os-tools.sh`` installs. A missing tool
fails the test with that hint: the checks are not optional.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
ALERTS = OPS / "alerts.yml"
ALERTS_TEST = OPS / "alerts_test.yml"
ALERTMANAGER = OPS / "alertmanager.yml"
PROMETHEUS = OPS / "prometheus.yml"
RUNBOOK = OPS / "runbook.md"
COMPOSE = ROOT / "docker-compose.yml"
#: The lines of the optional e-mail receiver in ops/alertmanager.yml: uncommented, a valid config.
EMAIL_PREFIX = re.compile(r"^(\s*)#email ", re.MULTILINE)
#: Where compose mounts the secrets Alertmanager reads.
SECRETS_DIR = "/run/secrets/"
#: Alertmanager's first release with `url_file` in webhook_configs.
URL_FILE_SINCE = (0, 26)
TIMEOUT_S = 60


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/os-tools.sh (Debian packages prometheus, "
                    "prometheus-alertmanager)")
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def amtool_version() -> tuple[int, int]:
    out = run(tool("amtool"), "--version")
    found = re.search(r"version (\d+)\.(\d+)", out.stdout + out.stderr)
    assert found, out
    return int(found.group(1)), int(found.group(2))


def checkable_alertmanager_config(tmp_path: Path, text: str | None = None) -> Path:
    """ops/alertmanager.yml as the local amtool can check it.

    The compose image (prom/alertmanager v0.27) reads webhook URLs from files (`url_file`, since
    0.26); Debian bookworm's amtool is 0.25 and refuses that key. With such an amtool, each
    `url_file` is checked here (a secret file's path) and replaced by a placeholder `url` for the
    rest of the check.
    """
    text = ALERTMANAGER.read_text(encoding="utf-8") if text is None else text
    if amtool_version() < URL_FILE_SINCE:
        for path in re.findall(r"url_file:\s*(\S+)", text):
            assert path.startswith(SECRETS_DIR), path
        text = re.sub(r"url_file:\s*\S+", "url: http://127.0.0.1:9/", text)
    target = tmp_path / "alertmanager.yml"
    target.write_text(text, encoding="utf-8")
    return target


# -- Prometheus: rules and their unit tests --------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    out = run(tool("promtool"), "check", "rules", ALERTS)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rule_unit_tests_pass() -> None:
    out = run(tool("promtool"), "test", "rules", ALERTS_TEST)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [case for test in load(ALERTS_TEST)["tests"] for case in test["alert_rule_test"]]
    assert load(ALERTS_TEST)["rule_files"] == [ALERTS.name]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    names = {rule["alert"] for rule in alert_rules()}
    assert names == firing, f"firing cases missing: {sorted(names - firing)}; unknown: {sorted(firing - names)}"
    assert names == quiet, f"not-firing cases missing: {sorted(names - quiet)}; unknown: {sorted(quiet - names)}"


def test_prometheus_config_passes_promtool_check(tmp_path: Path) -> None:
    """ops/prometheus.yml, with its in-container paths pointed at the repository's files."""
    config = load(PROMETHEUS)
    assert [Path(f).name for f in config["rule_files"]] == [ALERTS.name]
    config["rule_files"] = [str(ALERTS)]
    token = tmp_path / "token"
    token.write_text("x" * 32, encoding="utf-8")
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token)
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = run(tool("promtool"), "check", "config", checked)
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_sends_alerts_to_the_compose_alertmanager() -> None:
    config = load(PROMETHEUS)
    targets = [t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert targets == ["alertmanager:9093"]
    compose = load(COMPOSE)
    service = compose["services"]["alertmanager"]
    image, _, tag = service["image"].rpartition(":")
    assert image == "prom/alertmanager" and re.fullmatch(r"v\d+\.\d+\.\d+", tag), service["image"]
    assert tuple(int(p) for p in tag[1:].split(".")[:2]) >= URL_FILE_SINCE, "url_file needs Alertmanager 0.26+"
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in service["command"]
    assert "./ops/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in service["volumes"]
    assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", []))


# -- runbook ---------------------------------------------------------------------------------------


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_its_runbook_section() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    anchors = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}
    sections = set(re.findall(r"^## (Farm\w+)\s*$", text, re.MULTILINE))
    rules = alert_rules()
    for rule in rules:
        url = rule["annotations"].get("runbook_url")
        assert url, f"{rule['alert']} has no runbook_url"
        path, _, anchor = url.partition("#")
        assert path == "ops/runbook.md", f"{rule['alert']}: runbook_url {url} is not ops/runbook.md#<section>"
        assert anchor == rule["alert"].lower(), url
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in ops/runbook.md"
        severity = rule["labels"]["severity"]
        section = text.split(f"## {rule['alert']}\n", 1)[1].split("\n## ", 1)[0]
        assert f"**{severity.capitalize()}.**" in section, f"{rule['alert']}: the runbook does not say {severity}"
    assert sections == {r["alert"] for r in rules}, "runbook sections and alerts differ"


# -- Alertmanager ----------------------------------------------------------------------------------


def test_alertmanager_config_passes_amtool_check(tmp_path: Path) -> None:
    out = run(tool("amtool"), "check-config", checkable_alertmanager_config(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_documented_email_receiver_is_valid(tmp_path: Path) -> None:
    """Uncommenting the `#email ` lines (ops/README.md, "Alert routing") gives a valid config."""
    text = ALERTMANAGER.read_text(encoding="utf-8")
    assert len(EMAIL_PREFIX.findall(text)) >= 5
    enabled = EMAIL_PREFIX.sub(r"\1", text)
    page = next(r for r in yaml.safe_load(enabled)["receivers"] if r["name"] == "page")
    (email,) = page["email_configs"]
    assert email["auth_password_file"].startswith(SECRETS_DIR) and "auth_password" not in email
    out = run(tool("amtool"), "check-config", checkable_alertmanager_config(tmp_path, enabled))
    assert out.returncode == 0, out.stdout + out.stderr


def test_receivers_read_their_urls_and_passwords_from_compose_secrets() -> None:
    config = load(ALERTMANAGER)
    enabled = yaml.safe_load(EMAIL_PREFIX.sub(r"\1", ALERTMANAGER.read_text(encoding="utf-8")))
    compose = load(COMPOSE)
    mounted = set(compose["services"]["alertmanager"]["secrets"])
    assert mounted <= set(compose["secrets"])
    files: list[str] = []
    for receiver in config["receivers"]:
        hooks = receiver.get("webhook_configs") or []
        assert hooks, f"{receiver['name']}: no webhook"
        for hook in hooks:
            assert "url" not in hook, f"{receiver['name']}: a webhook URL written in the config"
            files.append(hook["url_file"])
    files += [e["auth_password_file"] for r in enabled["receivers"] for e in r.get("email_configs") or []]
    for path in files:
        assert path.startswith(SECRETS_DIR), path
        assert path.removeprefix(SECRETS_DIR) in mounted, f"{path} is not a secret of the alertmanager service"


@pytest.mark.parametrize("severity, receiver", [("page", "page"), ("warning", "notify"), ("", "notify")])
def test_pages_and_the_rest_are_routed_apart(tmp_path: Path, severity: str, receiver: str) -> None:
    config = checkable_alertmanager_config(tmp_path)
    labels = ["alertname=FarmTest"] + ([f"severity={severity}"] if severity else [])
    out = run(tool("amtool"), "config", "routes", "test", f"--config.file={config}",
              f"--verify.receivers={receiver}", *labels)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == receiver


def test_every_alert_reaches_the_receiver_its_severity_names(tmp_path: Path) -> None:
    config = checkable_alertmanager_config(tmp_path)
    for rule in alert_rules():
        severity = rule["labels"]["severity"]
        out = run(tool("amtool"), "config", "routes", "test", f"--config.file={config}",
                  f"alertname={rule['alert']}", f"severity={severity}")
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip() == ("page" if severity == "page" else "notify"), rule["alert"]
