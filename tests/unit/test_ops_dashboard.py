"""The Grafana dashboard, its provisioning, and GPU telemetry (dcgm-exporter) agree with the code.

The dashboard JSON is checked structurally (ids, layout, data source, targets); every PromQL
expression uses only metrics farm exports, dcgm-exporter's default counters or Prometheus' own,
and parses (``promtool check rules`` on the expressions as recording rules; promtool is installed by
``scripts/os-tools.sh``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_compose import PROMETHEUS_OWN, exported_metrics, metric_names

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "ops" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "farm.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "farm.yml"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "ops" / "prometheus.yml"
#: dcgm-exporter's default counters (etc/default-counters.csv of NVIDIA/dcgm-exporter 3.3.x), the
#: ones the compose exporter serves without a custom counters file.
DCGM_DEFAULT = {
    "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_PCIE_TX_THROUGHPUT",
    "DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL", "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS", "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_ROW_REMAP_FAILURE",
}
#: What the dashboard must show (issue 10): queues and waits, outcomes, render time, the worker's
#: swaps, cache hits and circuit, GPU memory.
REQUIRED_METRICS = {
    "farm_queue_depth", "farm_oldest_queued_job_age_seconds", "farm_jobs_finished_total",
    "farm_recent_render_seconds", "farm_worker_expert_swaps_total", "farm_worker_jobs_total",
    "farm_worker_circuit_open", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
}
#: Grafana's interval variables, and a value that makes the expression plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table"}
GRID_WIDTH = 24


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels") or [])
    return found


def graph_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def plain_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr}"
    return expr


def datasource_uid() -> str:
    (source,) = load(DATASOURCES)["datasources"]
    assert source["type"] == "prometheus"
    return str(source["uid"])


# -- the dashboard -------------------------------------------------------------------------------


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "farm" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None, "a provisioned dashboard carries no database id"
    assert dashboard["editable"] is False, "edit the JSON in the repository, not in the UI"
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    titles = [p["title"] for p in graph_panels(dashboard)]
    assert all(titles) and len(titles) == len(set(titles)), "panels need distinct titles"


def test_panels_lie_on_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    boxes: list[tuple[int, int, int, int, str]] = []
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in ("x", "y", "w", "h")), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        boxes.append((grid["x"], grid["y"], grid["x"] + grid["w"], grid["y"] + grid["h"], panel["title"]))
    for i, (x0, y0, x1, y1, a) in enumerate(boxes):
        for u0, v0, u1, v1, b in boxes[i + 1:]:
            assert x1 <= u0 or u1 <= x0 or y1 <= v0 or v1 <= y0, f"panels {a!r} and {b!r} overlap"


def test_every_panel_queries_the_provisioned_prometheus(dashboard: dict[str, Any]) -> None:
    uid = datasource_uid()
    for panel in graph_panels(dashboard):
        name = panel["title"]
        assert panel["type"] in PANEL_TYPES, f"{name}: panel type {panel['type']}"
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, name
        targets = panel["targets"]
        assert targets, f"{name}: no targets"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), name
        for target in targets:
            assert isinstance(target["expr"], str) and target["expr"].strip(), name
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], name


def test_every_expression_uses_only_metrics_that_exist(dashboard: dict[str, Any]) -> None:
    allowed = exported_metrics() | DCGM_DEFAULT | PROMETHEUS_OWN
    used: set[str] = set()
    for panel in graph_panels(dashboard):
        for target in panel["targets"]:
            names = metric_names(plain_promql(target["expr"]))
            assert names, f"{panel['title']}: no metric in {target['expr']}"
            unknown = names - allowed
            assert not unknown, f"{panel['title']}: metrics nobody exports: {sorted(unknown)}"
            used |= names
    assert used >= REQUIRED_METRICS, f"the dashboard does not show {sorted(REQUIRED_METRICS - used)}"


def test_label_values_in_expressions_are_the_code_s() -> None:
    """The cache-hit outcome and the quantile labels the expressions select exist."""
    from farm.metrics import QUANTILES
    from farm.worker.runner import OutcomeKind

    text = DASHBOARD.read_text(encoding="utf-8")
    outcomes = set(re.findall(r'outcome=~?\\"([^"\\]+)\\"', text))
    assert outcomes, "no panel selects worker outcomes"
    for selector in outcomes:
        assert set(selector.split("|")) <= {k.value for k in OutcomeKind}, selector
    assert OutcomeKind.CACHE_HIT.value in {v for s in outcomes for v in s.split("|")}
    for selector in re.findall(r'quantile=~?\\"([^"\\]+)\\"', text):
        assert set(selector.split("|")) <= {f"{q:g}" for q in QUANTILES}, selector


def test_every_expression_parses_as_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run scripts/os-tools.sh (Debian package prometheus)")
    rules = [{"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": plain_promql(target["expr"])}
             for panel in graph_panels(dashboard) for target in panel["targets"]]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# -- provisioning and compose ----------------------------------------------------------------------


def test_grafana_is_provisioned_from_the_repository() -> None:
    compose = load(COMPOSE)
    grafana = compose["services"]["grafana"]
    image, _, tag = grafana["image"].rpartition(":")
    assert image == "grafana/grafana" and re.fullmatch(r"\d+\.\d+\.\d+", tag), grafana["image"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./ops/grafana/provisioning"
    (provider,) = load(PROVIDERS)["providers"]
    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]] == "./ops/grafana/dashboards"
    (source,) = load(DATASOURCES)["datasources"]
    host, _, port = source["url"].removeprefix("http://").partition(":")
    assert host == "prometheus" and host in compose["services"]
    assert f"127.0.0.1:{port}:{port}" in compose["services"]["prometheus"]["ports"]
    assert all(str(p).startswith("127.0.0.1:") for p in grafana["ports"])


def test_grafana_admin_password_comes_from_a_secret_file() -> None:
    compose = load(COMPOSE)
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    path = env["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    assert path.startswith("/run/secrets/")
    secret = path.removeprefix("/run/secrets/")
    assert secret in grafana["secrets"] and compose["secrets"][secret]["file"].startswith("ops/secrets/")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"


def test_dcgm_exporter_runs_on_gpu_nodes_and_is_scraped() -> None:
    compose = load(COMPOSE)
    dcgm = compose["services"]["dcgm-exporter"]
    image, _, tag = dcgm["image"].rpartition(":")
    assert image == "nvcr.io/nvidia/k8s/dcgm-exporter" and re.fullmatch(r"\d+\.\d+\.\d+-\d+\.\d+\.\d+-\S+", tag)
    assert dcgm["profiles"] == ["gpu"]
    (device,) = dcgm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert not dcgm.get("ports"), "the exporter has no auth: scraped on the compose network only"
    jobs = {job["job_name"]: job for job in load(PROMETHEUS)["scrape_configs"]}
    targets = [t for sc in jobs["dcgm"]["static_configs"] for t in sc["targets"]]
    assert targets == ["dcgm-exporter:9400"]
