"""List is paginated (Google's AIP-158): pages by size and by bytes; clients follow them."""

from __future__ import annotations

import grpc

from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from agent.client import AgentClient
from tests.api.conftest import Agent
from tests.api.test_vm_api import apply, code_of, vm_doc

NAMES = [f"vm-{i:02}" for i in range(7)]


def make_vms(agent: Agent, **labels: str) -> None:
    for name in NAMES:
        apply(agent, vm_doc(name, run_strategy="Halted", labels=labels))


def pages(agent: Agent, **request: object) -> list[list[str]]:
    found: list[list[str]] = []
    token = ""
    while True:
        response = agent.vms.ListVirtualMachines(
            pb.ListVirtualMachinesRequest(page_token=token, **request)  # type: ignore[arg-type]
        )
        found.append([vm.metadata.name for vm in response.vms])
        token = response.next_page_token
        if not token:
            return found


def test_pages_of_the_size_asked_in_order_until_no_token(agent: Agent) -> None:
    make_vms(agent)
    assert pages(agent, page_size=3) == [NAMES[0:3], NAMES[3:6], NAMES[6:7]]
    assert pages(agent) == [NAMES]  # the default page holds them all


def test_a_token_is_for_the_same_filter_only(agent: Agent) -> None:
    make_vms(agent, tier="web")
    first = agent.vms.ListVirtualMachines(pb.ListVirtualMachinesRequest(page_size=2))
    code, details = code_of(
        lambda: agent.vms.ListVirtualMachines(
            pb.ListVirtualMachinesRequest(page_token=first.next_page_token, label_selector="x")
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("page_token")
    for bad in ("garbage", "!!"):
        code, details = code_of(
            lambda: agent.vms.ListVirtualMachines(pb.ListVirtualMachinesRequest(page_token=bad))  # noqa: B023
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("page_token")
    code, details = code_of(
        lambda: agent.vms.ListVirtualMachines(pb.ListVirtualMachinesRequest(page_size=-1))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("page_size")


def test_pages_are_cut_by_bytes_and_the_client_follows_them(agent: Agent) -> None:
    bulky = {f"example.com/label-{i:02}": "v" * 60 for i in range(60)}  # ~8 KB a VM
    make_vms(agent, **bulky)
    # (2 MiB by default, to stay well under gRPC's 4 MiB message cap; smaller here.)
    agent.service_servicer.page_bytes = 20_000
    cut = pages(agent, page_size=100)
    assert len(cut) > 2 and sum(cut, []) == NAMES
    with AgentClient(f"127.0.0.1:{agent.server.ports[0]}") as client:
        assert [vm.metadata.name for vm in client.list()] == NAMES
