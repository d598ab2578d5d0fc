"""Addresses, MACs, taps and node ports: never handed out twice, also after a restart."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from agent.domain.metadata import bookkeeping_from_json, bookkeeping_to_json
from agent.errors import FailedPrecondition, InvalidSpec
from agent.models import Bookkeeping, VMAllocation, VMSpec
from agent.network.allocation import allocate_vm, incoming_allocation
from agent.network.ipam import Ledger, parse_cidr, parse_pool, parse_port_range
from agent.spec import parse_vm


def spec(name: str, namespace: str = "default", **iface: Any) -> VMSpec:
    interface = {"name": "default", "masquerade": {}, **iface}
    return parse_vm(
        {
            "metadata": {
                "namespace": namespace,
                "name": name,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
            },
            "spec": {
                "template": {
                    "spec": {
                        "domain": {
                            "memory": {"guest": "64Mi"},
                            "devices": {"interfaces": [interface]},
                        },
                        "networks": [{"name": "default", "pod": {}}],
                    }
                }
            },
        }
    )


def ledger(cidr: str = "10.250.0.0/16", ports: str = "30000-30009") -> Ledger:
    return Ledger(parse_cidr(cidr), parse_port_range(ports))


def allocate(book: Ledger, vm: VMSpec, previous: VMAllocation | None = None) -> VMAllocation:
    domain = f"{vm.namespace}_{vm.name}"
    allocation = allocate_vm(domain, vm, previous, book)
    assert book.claim(domain, allocation) == []
    return allocation


def test_the_gateway_is_the_first_host_and_guests_follow() -> None:
    book = ledger()
    assert book.gateway == "10.250.0.1"
    first = allocate(book, spec("a", ports=[{"port": 80}]))
    second = allocate(book, spec("b", ports=[{"port": 80}, {"port": 53, "protocol": "UDP"}]))
    assert first.nics[0].ip == "10.250.0.2" and second.nics[0].ip == "10.250.0.3"
    assert [p.node_port for p in first.nics[0].ports] == [30000]
    # TCP and UDP node ports are separate spaces
    assert [(p.protocol, p.node_port) for p in second.nics[0].ports] == [
        ("TCP", 30001),
        ("UDP", 30000),
    ]
    assert first.nics[0].mac != second.nics[0].mac and first.nics[0].tap != second.nics[0].tap


def test_a_released_address_is_reused_lowest_first() -> None:
    book = ledger()
    for name in "abc":
        allocate(book, spec(name))
    book.release("default_b")
    assert allocate(book, spec("d")).nics[0].ip == "10.250.0.3"


def test_nothing_is_handed_out_twice_after_a_restart() -> None:
    before = ledger()
    held = {f"default_{n}": allocate(before, spec(n, ports=[{"port": 80}])) for n in "abc"}
    stored = {domain: _stored(a) for domain, a in held.items()}
    after = ledger()  # a new agent: only what the VMs' books say
    assert after.reset(stored) == []
    new = allocate(after, spec("d", ports=[{"port": 80}]))
    assert new.nics[0].ip not in {a.nics[0].ip for a in held.values()}
    assert new.nics[0].ports[0].node_port == 30003


def test_reallocating_keeps_what_the_vm_had() -> None:
    book = ledger()
    vm = spec("a", ports=[{"port": 80}])
    first = allocate(book, vm)
    allocate(book, spec("b", ports=[{"port": 80}]))
    again = allocate(book, spec("a", ports=[{"port": 80}, {"port": 443}]), previous=first)
    assert again.nics[0].ip == first.nics[0].ip and again.nics[0].mac == first.nics[0].mac
    assert [p.node_port for p in again.nics[0].ports] == [30000, 30002]


def test_vms_of_one_namespace_share_a_group_others_do_not() -> None:
    book = ledger()
    a1 = allocate(book, spec("a1", namespace="team-a"))
    a2 = allocate(book, spec("a2", namespace="team-a"))
    b = allocate(book, spec("b", namespace="team-b"))
    assert a1.group == a2.group != b.group


def test_explicit_node_port_conflicts_name_the_field_and_the_holder() -> None:
    book = ledger()
    allocate(book, spec("a", ports=[{"port": 80, "nodePort": 30005}]))
    with pytest.raises(InvalidSpec) as info:
        allocate(book, spec("b", namespace="x", ports=[{"port": 80, "nodePort": 30005}]))
    assert info.value.field.endswith("interfaces[0].ports[0].nodePort")
    assert "default/a" in info.value.problem
    with pytest.raises(InvalidSpec, match="outside the node-port range"):
        allocate(book, spec("c", ports=[{"port": 80, "nodePort": 8080}]))


def test_explicit_mac_conflict_is_refused() -> None:
    book = ledger()
    allocate(book, spec("a", macAddress="52:54:00:00:00:42"))
    with pytest.raises(InvalidSpec, match="macAddress"):
        allocate(book, spec("b", macAddress="52:54:00:00:00:42"))


def test_exhaustion_is_a_clear_error() -> None:
    book = ledger("10.250.0.0/30", "30000-30000")
    allocate(book, spec("a", ports=[{"port": 80}]))  # the only guest address of a /30
    with pytest.raises(FailedPrecondition, match="no free address"):
        allocate(book, spec("b"))
    with pytest.raises(FailedPrecondition, match="no free TCP node port"):
        book.free_node_port("TCP")


def test_reset_reports_overlapping_records() -> None:
    book = ledger()
    a = allocate(book, spec("a"))
    conflicts = ledger().reset({"default_a": a, "default_copy": a})
    assert conflicts and "held by default_a" in conflicts[0]


@pytest.mark.parametrize(
    ("text", "problem"),
    [("10.0.0.0/31", "too small"), ("10.0.0.1/16", "host bits"), ("fd00::/64", "4 octets")],
)
def test_bad_cidrs(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_cidr(text)


@pytest.mark.parametrize("text", ["30000", "a-b", "0-10", "200-100", "1-70000"])
def test_bad_port_ranges(text: str) -> None:
    with pytest.raises(ValueError):
        parse_port_range(text)


def test_allocation_survives_the_books() -> None:
    allocation = allocate(ledger(), spec("a", ports=[{"port": 80, "name": "http"}]))
    assert _stored(allocation) == allocation


def _stored(allocation: VMAllocation) -> VMAllocation | None:
    """The allocation as a restarted agent reads it back from the domain's metadata."""
    books = Bookkeeping(generation=1, created_at=0.0, network=allocation)
    return bookkeeping_from_json(bookkeeping_to_json(books)).network


def pooled(pool: str, cidr: str = "10.250.0.0/16") -> Ledger:
    network = parse_cidr(cidr)
    return Ledger(network, parse_port_range("30000-30009"), pool=parse_pool(pool, network))


def test_two_nodes_with_disjoint_pools_never_hand_out_the_same_address() -> None:
    node_a, node_b = pooled("10.250.0.0/28"), pooled("10.250.0.16/28")
    got_a = [allocate(node_a, spec(f"a{i}")).nics[0].ip for i in range(13)]
    got_b = [allocate(node_b, spec(f"b{i}")).nics[0].ip for i in range(16)]
    # the first pool starts after the gateway; the second uses its whole /28
    assert got_a[0] == "10.250.0.2" and got_b[0] == "10.250.0.16"
    assert not set(got_a) & set(got_b)
    assert node_a.gateway == node_b.gateway == "10.250.0.1"
    with pytest.raises(FailedPrecondition, match=r"pool 10\.250\.0\.16/28 .* no free address"):
        allocate(node_b, spec("one-too-many"))


def test_an_incoming_guest_keeps_its_address_from_another_pool_and_it_is_held() -> None:
    node_a, node_b = pooled("10.250.0.0/30"), pooled("10.250.1.0/30")
    moving = allocate(node_a, spec("moving"))
    assert moving.nics[0].ip == "10.250.0.2"
    # the target claims the allocation as it came (an address outside its own pool) ...
    assert node_b.claim("default_moving", moving) == []
    assert node_b.holder("ip", "10.250.0.2") == "default_moving"
    # ... and hands out only its own pool meanwhile, never the held address
    assert allocate(node_b, spec("local")).nics[0].ip == "10.250.1.0"
    assert node_b.free_ip() == "10.250.1.1"
    # restart-safe: the held address survives a rebuild from the books
    node_b.reset(dict(node_b.claims()))
    assert node_b.holder("ip", "10.250.0.2") == "default_moving"
    node_b.release("default_moving")
    assert node_b.holder("ip", "10.250.0.2") is None


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ("10.251.0.0/24", "not inside"),
        ("10.250.0.0/31", "no guest address"),
        ("10.250.0.5/24", "host bits"),
    ],
)
def test_a_pool_must_be_a_subnet_of_the_vm_network_with_room(pool: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pool(pool, parse_cidr("10.250.0.0/16"))


def test_an_incoming_vm_keeps_address_mac_and_tap_and_its_node_port_where_free() -> None:
    node_a, node_b = pooled("10.250.1.0/24"), pooled("10.250.2.0/24")
    moving = allocate(node_a, spec("moving", ports=[{"port": 80}, {"port": 53, "protocol": "UDP"}]))
    # node-b already publishes TCP 30000 for a VM of its own
    allocate(node_b, spec("local", ports=[{"port": 80}]))
    kept = incoming_allocation(moving, node_b, "default_moving")
    arrived = allocate_vm("default_moving", spec("moving", ports=[{"port": 80},
                          {"port": 53, "protocol": "UDP"}]), kept, node_b)  # fmt: skip
    before, after = moving.nics[0], arrived.nics[0]
    assert (after.ip, after.mac, after.tap) == (before.ip, before.mac, before.tap)
    ports = {(p.protocol, p.port): p.node_port for p in after.ports}
    assert ports == {("TCP", 80): 30001, ("UDP", 53): 30000}  # TCP 30000 was taken here
    assert node_b.claim("default_moving", arrived) == []
    assert node_b.holder("ip", before.ip) == "default_moving"


def test_an_incoming_vm_whose_address_is_held_here_is_refused() -> None:
    shared = ledger()  # two nodes without pools: the same address twice
    other = ledger()
    moving = allocate(other, spec("moving"))
    allocate(shared, spec("squatter"))
    with pytest.raises(
        FailedPrecondition, match=r"ip 10\.250\.0\.2 is held by vm default/squatter"
    ):
        incoming_allocation(moving, shared, "default_moving")
