"""The DaemonSet manifest: its configuration loads, and it runs the agent the way it needs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load_settings
from agent.metrics.collector import exported_names

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "daemonset.yaml"


def documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc}


def test_the_configmap_is_a_valid_agent_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(documents()["ConfigMap"]["data"]["config.yaml"])
    settings = load_settings(["--config", str(config)], environ={})
    assert settings.listen == ["0.0.0.0:9090"] and settings.tls_client_ca  # mTLS on the network
    assert settings.unix_socket == "/run/virt-agent/agent.sock"


def test_the_daemonset_has_what_the_agent_needs_on_a_node() -> None:
    kinds = documents()
    pod = kinds["DaemonSet"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["hostNetwork"] and container["securityContext"]["privileged"]
    assert not pod["automountServiceAccountToken"]  # no Kubernetes API rights at all
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/run/libvirt", "/var/lib/virt-agent", "/dev/net/tun", "/run/virt-agent"} <= mounts
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"][-1] == "agent.healthcheck"
    env = {e["name"] for e in container["env"]}
    assert "VIRT_AGENT_NODE_NAME" in env


# -- monitoring: scrape configuration, alert rules, dashboard ------------------------------

MONITORING = MANIFEST.parent / "monitoring"
# Prometheus' own series, and the ones that appear once live migration lands.
NOT_THE_AGENTS = {"up"}
AFTER_MIGRATION = {"virt_agent_migrations_total"}
PROMQL_FUNCTIONS = {"sum", "rate", "increase", "histogram_quantile", "label_values", "by"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (the repository writes them as ``name{...}``)."""
    names = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))
    names |= set(re.findall(r"label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)", expr))
    return names - PROMQL_FUNCTIONS


def dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


def test_the_configmap_serves_metrics_where_the_annotations_say(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(documents()["ConfigMap"]["data"]["config.yaml"])
    settings = load_settings(["--config", str(config)], environ={})
    assert settings.metrics_listen == "0.0.0.0:8443" and not settings.metrics_insecure
    template = documents()["DaemonSet"]["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8443"
    assert annotations["prometheus.io/scheme"] == "https"
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == 8443
    monitor = list(yaml.safe_load_all((MONITORING / "servicemonitor.yaml").read_text()))
    service = next(d for d in monitor if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_the_dashboard_only_uses_metrics_the_agent_exports() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    used: set[str] = set()
    for expr in dashboard_exprs(dashboard):
        used |= promql_metric_names(expr)
    exported = exported_names()
    assert used - NOT_THE_AGENTS <= exported, sorted(used - NOT_THE_AGENTS - exported)
    # Every area of the dashboard is there: node, CPU, memory, network, disk, the agent.
    for needed in ("virt_agent_node_vms", "kubevirt_vmi_cpu_usage_seconds_total",
                   "kubevirt_vmi_memory_resident_bytes", "kubevirt_vmi_network_receive_bytes_total",
                   "kubevirt_vmi_storage_read_traffic_bytes_total",
                   "virt_agent_grpc_request_duration_seconds_bucket"):  # fmt: skip
        assert needed in used


def test_the_alert_rules_use_exported_metrics_and_pass_promtool() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    used: set[str] = set()
    alerts = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= promql_metric_names(rule["expr"])
            alerts.add(rule.get("alert", ""))
    assert used - NOT_THE_AGENTS - AFTER_MIGRATION <= exported_names()
    assert {"VirtAgentDown", "VirtAgentLibvirtDisconnected", "VirtAgentVMCrashLooping",
            "VirtAgentMigrationsFailing", "VirtAgentScrapeMisses"} <= alerts  # fmt: skip
    if shutil.which("promtool") is None and not os.environ.get("CI"):
        pytest.skip("needs promtool (Debian's prometheus)")  # allowed-skip: CI installs it
    check = subprocess.run(["promtool", "check", "rules", str(MONITORING / "alerts.yaml")],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
