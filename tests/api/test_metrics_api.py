"""The agent's metrics on libvirt's test driver: gRPC calls and operations counted, and the
collector reading the real adapter's bulk stats call."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from agent.metrics.bounded import BoundedStats
from agent.metrics.collector import vm_view
from agent.metrics.ports import NodeFacts
from agent.metrics.setup import build_endpoint
from tests.api.conftest import Agent
from tests.api.test_vm_api import apply, vm_doc

GET = "/virtagent.v1.VirtualMachineService/GetVirtualMachine"
FACTS = NodeFacts("node-test", cpus=2, memory_bytes=4 << 30, reserved_memory_bytes=0,
                  virt_type="qemu")  # fmt: skip


def scrape(agent: Agent) -> dict[str, list[tuple[dict[str, str], float]]]:
    endpoint = build_endpoint(
        BoundedStats(agent.hv, bound=4.0),
        lambda: map(vm_view, agent.service.cache.records()),
        lambda: FACTS,
    )
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(endpoint.render()[0].decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def counter(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
            **labels: str) -> float:  # fmt: skip
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


def grows(agent: Agent, name: str, **labels: str) -> Callable[[], float]:
    before = counter(scrape(agent), name, **labels)
    return lambda: counter(scrape(agent), name, **labels) - before


def test_grpc_calls_are_counted_by_method_and_code(agent: Agent) -> None:
    not_found = grows(agent, "virt_agent_grpc_requests_total", method=GET, code="NOT_FOUND")
    ok = grows(agent, "virt_agent_grpc_requests_total", method=GET, code="OK")
    timed = grows(agent, "virt_agent_grpc_request_duration_seconds_count", method=GET)
    with pytest.raises(grpc.RpcError):
        agent.vms.GetVirtualMachine(pb.GetVirtualMachineRequest(namespace="default", name="no"))
    apply(agent, vm_doc())
    agent.vms.GetVirtualMachine(pb.GetVirtualMachineRequest(namespace="default", name="web"))
    agent.vms.GetVirtualMachine(pb.GetVirtualMachineRequest(namespace="default", name="web"))
    assert (not_found(), ok(), timed()) == (1, 2, 3)


def test_operations_are_counted_by_verb_and_outcome(agent: Agent) -> None:
    applied = grows(agent, "virt_agent_operations_total", verb="apply", outcome="success")
    failed = grows(agent, "virt_agent_operations_total", verb="pause", outcome="failed")
    stopped = grows(agent, "virt_agent_operations_total", verb="stop", outcome="success")
    apply(agent, vm_doc())
    ref = {"namespace": "default", "name": "web"}
    agent.vms.StopVirtualMachine(pb.StopVirtualMachineRequest(**ref, force=True))
    with pytest.raises(grpc.RpcError):  # pausing a stopped VM: FAILED_PRECONDITION
        agent.vms.PauseVirtualMachine(pb.PauseVirtualMachineRequest(**ref))
    assert (applied(), stopped(), failed()) == (1, 1, 1)


def test_vm_series_follow_the_vms_on_the_node(agent: Agent) -> None:
    records = agent.hv.all_domain_stats()  # the adapter: plain records, no libvirt objects
    assert all(isinstance(r.stats, dict) and isinstance(r.name, str) for r in records)
    apply(agent, vm_doc("web", "team-a"))
    samples = scrape(agent)
    info = [labels for labels, _ in samples["kubevirt_vmi_info"]]
    assert {
        "node": "node-test",
        "namespace": "team-a",
        "name": "web",
        "phase": "running",
    }.items() <= info[0].items()
    assert counter(samples, "virt_agent_node_vms", phase="running") == 1
    agent.vms.DeleteVirtualMachine(pb.DeleteVirtualMachineRequest(namespace="team-a", name="web"))
    samples = scrape(agent)
    assert "kubevirt_vmi_info" not in samples  # gone from the very next scrape
    assert counter(samples, "virt_agent_node_vms", phase="running") == 0
