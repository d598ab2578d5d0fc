"""A VM larger than the node is refused naming the field (libvirt's test driver)."""

from __future__ import annotations

import grpc

from agent.adapters.host import PsutilHostProbe
from tests.api.conftest import Agent
from tests.api.test_vm_api import apply, code_of, vm_doc


def test_memory_and_cpus_above_the_nodes_capacity_are_refused(agent: Agent) -> None:
    facts = PsutilHostProbe().facts()
    too_much = vm_doc()
    too_much["spec"]["template"]["spec"]["domain"]["memory"]["guest"] = str(
        facts.memory_bytes + 2**30
    )
    code, details = code_of(lambda: apply(agent, too_much))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("spec.template.spec.domain.memory.guest:")
    assert "more than this node has" in details
    too_many = vm_doc()
    too_many["spec"]["template"]["spec"]["domain"]["cpu"] = {"sockets": facts.cpus + 1}
    code, details = code_of(lambda: apply(agent, too_many))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("spec.template.spec.domain.cpu:")
    assert agent.hv.list_domains() == []
    apply(agent, vm_doc())  # one that fits still does
