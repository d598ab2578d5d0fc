"""What a client sends or leaves behind is bounded in the agent's memory (test driver)."""

from __future__ import annotations

import grpc
import pytest

from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from agent.domain.vmcache import WATCH_BUFFER_BYTES, VMCache
from tests.api.conftest import Agent
from tests.api.test_vm_api import apply, code_of, vm_doc
from tests.testbed.wait import wait_for


def test_a_long_request_id_is_refused_not_kept(agent: Agent) -> None:
    apply(agent, vm_doc())
    huge = "r" * (1024 * 1024)
    code, details = code_of(
        lambda: agent.vms.StartVirtualMachine(
            pb.StartVirtualMachineRequest(namespace="default", name="web", request_id=huge)
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("request_id:")
    assert len(agent.service.requests._entries) == 0
    fine = pb.StartVirtualMachineRequest(namespace="default", name="web", request_id="r" * 128)
    agent.vms.StartVirtualMachine(fine)


def test_no_lock_is_kept_for_names_that_were_only_called(agent: Agent) -> None:
    for index in range(200):  # names that never existed
        request = pb.StopVirtualMachineRequest(namespace="default", name=f"ghost-{index}")
        code, _ = code_of(lambda: agent.vms.StopVirtualMachine(request))  # noqa: B023
        assert code == grpc.StatusCode.NOT_FOUND
    apply(agent, vm_doc())
    agent.vms.StopVirtualMachine(pb.StopVirtualMachineRequest(namespace="default", name="web"))
    locks = agent.service._vm_locks.locks  # (the agent's note of the stop may hold one)
    wait_for(lambda: len(locks) == 0, 10, message="every lock to be dropped once unused")


def test_a_watcher_over_its_byte_budget_is_ended_and_can_watch_again(agent: Agent) -> None:
    registry: VMCache = agent.service.cache
    stream = agent.vms.WatchVirtualMachines(pb.WatchVirtualMachinesRequest())
    assert next(stream).type == pb.EVENT_TYPE_SYNCED
    (watch,) = registry._watches
    # (8 MiB by default; gRPC's own flow-control windows would have to fill first, so the
    # budget is made smaller than one event here.)
    registry.watch_buffer_bytes = 1000
    apply(agent, vm_doc(run_strategy="Halted", labels={"change": "1"}))
    assert watch not in registry._watches and watch.buffered_bytes == 0  # nothing held
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "watch again" in info.value.details()
    registry.watch_buffer_bytes = WATCH_BUFFER_BYTES
    again = agent.vms.WatchVirtualMachines(pb.WatchVirtualMachinesRequest())
    first = next(again)
    assert first.type == pb.EVENT_TYPE_ADDED and first.vm.metadata.labels["change"] == "1"
    again.cancel()
