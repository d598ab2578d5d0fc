"""Watch continuity through a real gRPC channel: resuming from a resource version, too old
or from an earlier run (OUT_OF_RANGE), and the client resuming and re-listing by itself."""

from __future__ import annotations

from pathlib import Path

import grpc

import agent.metrics.agent_metrics as agent_metrics
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from agent.client import AgentClient
from agent.domain.vmcache import WatchEvent
from tests.api.conftest import Agent, running_agent
from tests.api.test_vm_api import apply, code_of, vm_doc
from tests.testbed.wait import wait_for

_WATCH = "/virtagent.v1.VirtualMachineService/WatchVirtualMachines"


def _list_version(agent: Agent) -> int:
    return agent.vms.ListVirtualMachines(pb.ListVirtualMachinesRequest()).resource_version


def _delete(agent: Agent, name: str) -> None:
    request = pb.DeleteVirtualMachineRequest(namespace="default", name=name, grace_period_seconds=0)
    agent.vms.DeleteVirtualMachine(request)


def test_a_watch_from_a_list_version_gets_the_changes_since_and_no_snapshot(agent: Agent) -> None:
    apply(agent, vm_doc("a", run_strategy="Halted"))
    version = _list_version(agent)
    apply(agent, vm_doc("b", run_strategy="Halted"))
    _delete(agent, "a")
    stream = agent.vms.WatchVirtualMachines(
        pb.WatchVirtualMachinesRequest(resource_version=version)
    )
    try:
        events = [next(stream) for _ in range(3)]
    finally:
        stream.cancel()
    kinds = [(e.type, e.vm.metadata.name) for e in events]
    assert kinds == [
        (pb.EVENT_TYPE_ADDED, "b"),
        (pb.EVENT_TYPE_DELETED, "a"),
        (pb.EVENT_TYPE_SYNCED, ""),
    ]
    assert [e.resource_version for e in events] == [version + 1, version + 2, version + 2]


def test_a_version_too_old_for_the_history_is_out_of_range_saying_to_list(tmp_path: Path) -> None:
    with running_agent(tmp_path, watch_history=2) as agent:
        version = _list_version(agent)
        for name in ("a", "b", "c"):
            apply(agent, vm_doc(name, run_strategy="Halted"))
        request = pb.WatchVirtualMachinesRequest(resource_version=version)
        code, details = code_of(lambda: next(agent.vms.WatchVirtualMachines(request)))
        assert code == grpc.StatusCode.OUT_OF_RANGE
        assert f"resource_version {version} is too old" in details
        assert "list the VMs again" in details


def test_a_version_from_before_the_agent_restarted_is_out_of_range(tmp_path: Path) -> None:
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    with running_agent(tmp_path / "before") as agent:
        apply(agent, vm_doc("a", run_strategy="Halted"))
        version = _list_version(agent)
    with running_agent(tmp_path / "after") as agent:
        request = pb.WatchVirtualMachinesRequest(resource_version=version)
        code, details = code_of(lambda: next(agent.vms.WatchVirtualMachines(request)))
        assert code == grpc.StatusCode.OUT_OF_RANGE and "list the VMs again" in details


def _cut_off_watch(agent: Agent) -> None:
    """The agent ends the open watch (as it does a watcher that fell behind: injected)."""
    (watch,) = agent.service.cache._watches
    watch.queue.put(WatchEvent("OVERFLOW", None, 0))
    wait_for(lambda: not agent.service.cache._watches, timeout=10, message="the watch ended")


def test_the_client_resumes_a_lost_watch_without_a_gap_or_a_duplicate(agent: Agent) -> None:
    apply(agent, vm_doc("a", run_strategy="Halted"))
    with AgentClient(f"127.0.0.1:{agent.server.ports[0]}") as client:
        events = client.watch()
        assert [next(events).type for _ in range(2)] == [pb.EVENT_TYPE_ADDED, pb.EVENT_TYPE_SYNCED]
        _cut_off_watch(agent)
        apply(agent, vm_doc("b", run_strategy="Halted"))  # while no watch is open
        _delete(agent, "a")
        seen = [next(events) for _ in range(2)]
        apply(agent, vm_doc("c", run_strategy="Halted"))
        seen.append(next(events))
        events.close()
    kinds = [(e.type, e.vm.metadata.name) for e in seen]
    assert kinds == [
        (pb.EVENT_TYPE_ADDED, "b"),
        (pb.EVENT_TYPE_DELETED, "a"),
        (pb.EVENT_TYPE_ADDED, "c"),
    ]
    versions = [e.resource_version for e in seen]
    assert versions == sorted(set(versions))


def _refused_resumes() -> float:
    value = agent_metrics.GRPC_REQUESTS.labels(_WATCH, "OUT_OF_RANGE")._value.get()
    return float(value)


def test_the_client_relists_when_the_agent_cannot_resume(tmp_path: Path) -> None:
    refused = _refused_resumes()
    with running_agent(tmp_path, watch_history=1) as agent:
        for name in ("a", "b"):
            apply(agent, vm_doc(name, run_strategy="Halted"))
        with AgentClient(f"127.0.0.1:{agent.server.ports[0]}") as client:
            events = client.watch()
            assert [next(events).type for _ in range(3)][-1] == pb.EVENT_TYPE_SYNCED
            _cut_off_watch(agent)
            # More changes than the history holds: the watch must list again.
            apply(agent, vm_doc("c", run_strategy="Halted"))
            _delete(agent, "a")
            apply(agent, vm_doc("b", run_strategy="Halted", labels={"tier": "db"}))
            seen = [next(events) for _ in range(3)]
            _delete(agent, "c")
            seen.append(next(events))  # and it carries on watching
            events.close()
    assert _refused_resumes() == refused + 1  # it re-listed (not resumed)
    kinds = {(e.type, e.vm.metadata.name) for e in seen[:3]}
    assert kinds == {
        (pb.EVENT_TYPE_ADDED, "c"),
        (pb.EVENT_TYPE_MODIFIED, "b"),
        (pb.EVENT_TYPE_DELETED, "a"),
    }
    modified = next(e for e in seen if e.type == pb.EVENT_TYPE_MODIFIED)
    assert modified.vm.metadata.labels["tier"] == "db"  # the VM as it is now
    assert (seen[3].type, seen[3].vm.metadata.name) == (pb.EVENT_TYPE_DELETED, "c")
