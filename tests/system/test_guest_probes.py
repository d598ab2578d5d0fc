"""Probes run by the real agent against the test guest: readiness follows the guest's web
page (port 80), and a liveness probe that keeps failing hard-restarts the guest."""

from __future__ import annotations

from agent.api._gen.virtagent.v1 import vm_pb2
from tests.system.agentproc import AgentProcess, guest_vm
from tests.testbed.wait import wait_for

NIC = [{"name": "default", "masquerade": {}}]


def ready(agent: AgentProcess, name: str) -> vm_pb2.Condition | None:
    vm = agent.get(name)
    return next((c for c in vm.status.conditions if c.type == "Ready"), None)


def test_readiness_follows_the_guests_web_page(agent: AgentProcess) -> None:
    doc = guest_vm("ready", interfaces=NIC)
    instance = doc["spec"]["template"]["spec"]
    # The first probe runs 10 s after the start: Apply's answer precedes it.
    probe = {"httpGet": {"port": 80, "path": "/"}, "initialDelaySeconds": 10, "periodSeconds": 1}
    instance["readinessProbe"] = probe
    vm = agent.apply(doc)
    assert vm.status.phase == vm_pb2.PHASE_RUNNING
    condition = ready(agent, "ready")
    assert condition is not None and condition.status == "False"  # not probed yet
    assert condition.reason == "ReadinessProbe"
    wait_for(lambda: ready(agent, "ready").status == "True", 90, message="Ready")  # type: ignore[union-attr]
    assert "VIRT-AGENT-READY" in agent.console("ready")


def test_a_failing_liveness_probe_restarts_the_guest(agent: AgentProcess) -> None:
    doc = guest_vm("alive", interfaces=NIC)
    instance = doc["spec"]["template"]["spec"]
    # Nothing listens on port 81 in the test guest: every probe fails.
    instance["livenessProbe"] = {
        "tcpSocket": {"port": 81},
        "initialDelaySeconds": 3,
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    agent.apply(doc)
    agent.wait_console("alive", "VIRT-AGENT-READY")
    agent.wait_console("alive", "VIRT-AGENT-READY", count=2, timeout=120)
    assert "liveness probe: hard restart" in agent.log_tail(200)
