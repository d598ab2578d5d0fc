"""Graceful stops cannot pin a VM or the node's call slots (libvirt's test driver)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from agent.models import MAX_GRACE_PERIOD_SECONDS
from tests.api.conftest import Agent, running_agent
from tests.api.test_vm_api import apply, code_of, vm_doc
from tests.testbed.wait import wait_for

HOUR = 3600


def ignore_acpi(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    presses: list[str] = []
    monkeypatch.setattr(agent.hv, "shutdown", presses.append)  # the guest ignores the button
    return presses


def holding(agent: Agent, domain: str, verb: str) -> bool:
    return agent.service._holders.get(domain) == verb


def test_grace_periods_have_a_maximum(agent: Agent) -> None:
    huge = 2**62
    code, details = code_of(
        lambda: apply(agent, vm_doc(instance={"terminationGracePeriodSeconds": huge}))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("spec.template.spec.terminationGracePeriodSeconds")
    assert str(MAX_GRACE_PERIOD_SECONDS) in details
    apply(agent, vm_doc())
    for call in (
        lambda: agent.vms.StopVirtualMachine(
            pb.StopVirtualMachineRequest(namespace="default", name="web", grace_period_seconds=huge)
        ),
        lambda: agent.vms.DeleteVirtualMachine(
            pb.DeleteVirtualMachineRequest(
                namespace="default", name="web", grace_period_seconds=huge
            )
        ),
    ):
        code, details = code_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "grace_period_seconds" in details


@pytest.mark.parametrize("forced", ["stop --force", "delete --grace 0", "hard restart"])
def test_a_forced_stop_preempts_a_graceful_one_in_flight(
    agent: Agent, monkeypatch: pytest.MonkeyPatch, forced: str
) -> None:
    apply(agent, vm_doc())
    ignore_acpi(agent, monkeypatch)
    ref: dict[str, Any] = {"namespace": "default", "name": "web"}
    graceful = agent.vms.StopVirtualMachine.future(
        pb.StopVirtualMachineRequest(**ref, grace_period_seconds=HOUR)
    )
    wait_for(lambda: holding(agent, "default_web", "stop"), 10, message="the graceful stop")
    if forced == "stop --force":
        vm = agent.vms.StopVirtualMachine(
            pb.StopVirtualMachineRequest(**ref, force=True), timeout=60
        ).vm
        assert vm.status.phase == vm_pb2.PHASE_STOPPED and vm.status.reason == "Destroyed"
    elif forced == "delete --grace 0":
        agent.vms.DeleteVirtualMachine(
            pb.DeleteVirtualMachineRequest(**ref, grace_period_seconds=0), timeout=60
        )
        assert agent.hv.lookup("default_web") is None
    else:
        vm = agent.vms.RestartVirtualMachine(
            pb.RestartVirtualMachineRequest(**ref, hard=True), timeout=60
        ).vm
        assert vm.status.phase == vm_pb2.PHASE_RUNNING
    graceful.exception(timeout=60)  # the graceful call ends too, whatever it answers


def test_a_cancelled_graceful_stop_gives_back_its_slot_and_the_vm(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = agent.service_servicer.slow_calls.limit
    names = [f"vm{i}" for i in range(limit)]
    for name in names:
        apply(agent, vm_doc(name))
    ignore_acpi(agent, monkeypatch)
    calls = [
        agent.vms.StopVirtualMachine.future(
            pb.StopVirtualMachineRequest(namespace="default", name=name, grace_period_seconds=HOUR)
        )
        for name in names
    ]
    wait_for(
        lambda: all(holding(agent, f"default_{n}", "stop") for n in names),
        10,
        message="every graceful stop to hold its VM",
    )
    code, _ = code_of(lambda: apply(agent, vm_doc("more")))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # every slot is taken
    for call in calls:
        call.cancel()
    wait_for(
        lambda: not any(holding(agent, f"default_{n}", "stop") for n in names),
        30,
        message="the cancelled stops to let go of their VMs",
    )
    apply(agent, vm_doc("more"))  # a slot is free again
    again = agent.vms.StopVirtualMachine(
        pb.StopVirtualMachineRequest(namespace="default", name="vm0", force=True), timeout=60
    ).vm
    assert again.status.phase == vm_pb2.PHASE_STOPPED


def test_no_unary_call_runs_past_the_servers_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graceful stop of a guest that ignores the button, asked with the longest grace period
    and no client deadline, is cut at --max-call-seconds; the VM is not pinned by it."""
    with running_agent(tmp_path, max_call_seconds=2.0) as short:
        apply(short, vm_doc())
        ignore_acpi(short, monkeypatch)
        ref: dict[str, Any] = {"namespace": "default", "name": "web"}
        stop = pb.StopVirtualMachineRequest(**ref, grace_period_seconds=MAX_GRACE_PERIOD_SECONDS)
        code, _ = code_of(lambda: short.vms.StopVirtualMachine(stop))
        assert code == grpc.StatusCode.CANCELLED
        wait_for(lambda: not holding(short, "default_web", "stop"), timeout=10,
                 message="the cut stop still holds the VM")  # fmt: skip
        forced = pb.StopVirtualMachineRequest(**ref, force=True)
        assert short.vms.StopVirtualMachine(forced).vm.status.phase == vm_pb2.PHASE_STOPPED
