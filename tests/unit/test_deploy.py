"""The DaemonSet manifest: its configuration loads, and it runs the agent the way it needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent.config import load_settings

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
