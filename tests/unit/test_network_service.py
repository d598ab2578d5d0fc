"""RoutedNetwork against stateful fakes of links, nftables, conntrack and DHCP."""

from __future__ import annotations

import dataclasses
import ipaddress
import uuid
from typing import Any

import pytest

from agent.errors import FailedPrecondition, InvalidSpec, Unavailable
from agent.models import Port, VMAllocation, VMSpec
from agent.network.plan import NetworkConfig
from agent.network.ports import NetworkError
from agent.network.service import RoutedNetwork
from agent.spec import parse_vm
from tests.unit.network_fakes import FakeConntrack, FakeDhcp, FakeFirewall, FakeLinks

TABLE = ("inet", "virt_agent")
CONFIG = NetworkConfig(
    cidr=ipaddress.IPv4Network("10.250.0.0/16"),
    node_ports=(30000, 30099),
    uplink="eth0",
    # The operator's bridge networks: name -> host bridge (two of them broken on purpose).
    bridges=(("lan", "br0"), ("lost", "nobr0"), ("uplink", "eth0")),
)


class Node:
    """A RoutedNetwork with its fakes, and a little bookkeeping like VMService's."""

    def __init__(
        self,
        links: FakeLinks | None = None,
        firewall: FakeFirewall | None = None,
        config: NetworkConfig = CONFIG,
    ):
        self.links = links or FakeLinks()
        self.firewall = firewall or FakeFirewall()
        self.conntrack = FakeConntrack()
        self.dhcp = FakeDhcp()
        self.network = RoutedNetwork(
            config, self.links, self.firewall, self.conntrack, self.dhcp,
            ready_timeout=0.01,
        )  # fmt: skip
        self.books: dict[str, tuple[VMSpec, VMAllocation | None]] = {}

    def create(self, spec: VMSpec, *, plug: bool = True) -> VMAllocation:
        domain = f"{spec.namespace}_{spec.name}"
        books = self.network.allocate(domain, spec, None)
        assert books is not None
        self.books[domain] = (spec, books)
        if plug:
            self.network.plug(domain, spec, books)
        return books

    def delete(self, domain: str) -> None:
        spec, books = self.books.pop(domain)
        self.network.unplug(domain, spec, books)

    def vms(self, active: bool = True) -> dict[str, tuple[VMSpec, VMAllocation | None, bool]]:
        return {d: (s, b, active) for d, (s, b) in self.books.items()}

    def elements(self, name: str) -> list[Any]:
        return self.firewall.elements(*TABLE, name)


def vm(name: str, namespace: str = "default", *, bridge: str = "", **iface: Any) -> VMSpec:
    interfaces = [{"name": "default", "masquerade": {}, **iface}]
    networks: list[dict[str, Any]] = [{"name": "default", "pod": {}}]
    if bridge:
        interfaces.append({"name": "lan", "bridge": {}})
        networks.append({"name": "lan", "multus": {"networkName": bridge}})
    return parse_vm(
        {
            "metadata": {
                "namespace": namespace,
                "name": name,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{namespace}/{name}")),
            },
            "spec": {
                "template": {
                    "spec": {
                        "domain": {
                            "memory": {"guest": "64Mi"},
                            "devices": {"interfaces": interfaces},
                        },
                        "networks": networks,
                    }
                }
            },
        }
    )


@pytest.fixture
def node() -> Node:
    n = Node()
    n.network.start()
    n.network.reconcile({})
    return n


def test_nothing_is_allocated_before_the_first_reconcile() -> None:
    with pytest.raises(Unavailable, match="not reconciled"):
        Node().create(vm("web"))


def test_start_turns_forwarding_on_and_needs_the_uplink() -> None:
    n = Node()
    n.network.start()
    assert n.links.forwarding
    missing = Node(links=FakeLinks(links={}))
    with pytest.raises(NetworkError, match="uplink 'eth0' does not exist"):
        missing.network.start()


def test_allocation_holds_address_and_node_port(node: Node) -> None:
    books = node.create(vm("web", ports=[{"port": 80}]), plug=False)
    nic = books.nics[0]
    assert nic.ip == "10.250.0.2" and nic.ports == (Port(port=80, node_port=30000),)
    (status,) = node.network.interfaces("default_web", vm("web", ports=[{"port": 80}]), books)
    assert status.ip_addresses == ("10.250.0.2",) and status.published_ports[0].node_port == 30000


def test_plug_makes_tap_lease_and_elements(node: Node) -> None:
    spec = vm("web", ports=[{"port": 80}])
    books = node.create(spec)
    (nic,) = node.network.nics("default_web", spec, books)
    tap = node.links.taps_made[nic.tap]
    assert (tap.gateway, tap.guest_ip, tap.guest_mac, tap.mtu) == (
        "10.250.0.1", "10.250.0.2", nic.mac, 1450,
    )  # fmt: skip
    assert nic.mtu == 1450 and not tap.multi_queue
    lease = node.dhcp.leases[nic.tap]
    assert (lease.ip, lease.mac, lease.prefix_len, lease.hostname) == (
        "10.250.0.2",
        nic.mac,
        16,
        "web",
    )
    assert node.elements("taps") == [nic.tap]
    assert node.elements("fwd_addr") == [[{"concat": ["tcp", 30000]}, "10.250.0.2"]]
    assert node.elements("fwd_port") == [[{"concat": ["tcp", 30000]}, 80]]


def test_plug_twice_changes_nothing(node: Node) -> None:
    spec = vm("web")
    books = node.create(spec)
    transactions = len(node.firewall.transactions)
    node.network.plug("default_web", spec, books)
    assert len(node.firewall.transactions) == transactions  # no difference, no transaction
    assert len(node.links.created) == 1


def test_rule_count_does_not_grow_with_vms(node: Node) -> None:
    node.create(vm("one"))
    one = node.firewall.rule_count(*TABLE)
    for i in range(50):
        node.create(vm(f"vm{i}", namespace=f"ns{i % 5}", ports=[{"port": 80}]))
    assert node.firewall.rule_count(*TABLE) == one
    assert len(node.elements("taps")) == 51 and len(node.elements("fwd_addr")) == 50
    assert len(node.elements("same_namespace")) == 6


def test_a_failed_plug_rolls_back(node: Node) -> None:
    spec = vm("web")
    domain = "default_web"
    books = node.network.allocate(domain, spec, None)
    node.firewall.fail_next = 2  # the update, then the rebuild
    with pytest.raises(NetworkError):
        node.network.plug(domain, spec, books)
    assert node.links.taps_made == {} and node.dhcp.leases == {}
    node.network.plug(domain, spec, books)  # and it works once nft does
    assert len(node.elements("taps")) == 1


def test_a_failed_update_falls_back_to_a_rebuild(node: Node) -> None:
    node.create(vm("a"))
    node.firewall.fail_next = 1
    node.create(vm("b"))
    assert len(node.elements("taps")) == 2
    assert "delete" in node.firewall.transactions[-1][1]  # add + delete + add table


def test_unplug_removes_everything_and_frees_the_address(node: Node) -> None:
    spec = vm("web", ports=[{"port": 80}])
    books = node.create(spec)
    tap = books.nics[0].tap
    node.delete("default_web")
    assert node.links.taps_made == {} and node.dhcp.leases == {}
    assert node.elements("taps") == [] and node.elements("fwd_addr") == []
    assert node.elements("same_namespace") == []
    assert node.conntrack.forgotten == ["10.250.0.2"]
    assert tap in node.links.deleted
    assert node.create(vm("next")).nics[0].ip == "10.250.0.2"


def test_unplug_survives_a_conntrack_failure(node: Node) -> None:
    node.create(vm("web"))
    node.conntrack.error = NetworkError("no conntrack here")
    node.delete("default_web")
    assert node.links.taps_made == {}


def test_bridge_nic_joins_its_bridge_without_nat_or_dhcp(node: Node) -> None:
    spec = vm("web", bridge="lan")
    books = node.create(spec)
    default, lan = node.network.nics("default_web", spec, books)
    assert lan.mtu == 9000 and node.links.taps_made[lan.tap].bridge == "br0"
    assert set(node.dhcp.leases) == {default.tap}
    assert node.elements("taps") == [default.tap]


@pytest.mark.parametrize(
    ("bridge", "found"), [("lost", "does not exist"), ("uplink", "is a device")]
)
def test_a_missing_bridge_is_refused_naming_the_field(node: Node, bridge: str, found: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        node.create(vm("web", bridge=bridge), plug=False)
    assert info.value.field == "spec.template.spec.networks[1].multus.networkName"
    assert found in info.value.problem
    assert node.network.ledger.claims() == {}


@pytest.mark.parametrize("name", ["br0", "docker0", "cni0", "eth0"])
def test_a_bridge_network_must_be_on_the_operators_list(node: Node, name: str) -> None:
    # multus.networkName names an operator-listed network, never a host link by its name.
    with pytest.raises(InvalidSpec) as info:
        node.create(vm("web", bridge=name), plug=False)
    assert info.value.field == "spec.template.spec.networks[1].multus.networkName"
    assert f"{name!r} is not a bridge network of this node" in info.value.problem
    assert "lan" in info.value.problem  # the ones there are
    assert node.network.ledger.claims() == {}


def test_without_bridge_networks_bridge_binding_is_refused() -> None:
    bare = Node(config=dataclasses.replace(CONFIG, bridges=()))
    bare.network.reconcile({})
    with pytest.raises(InvalidSpec) as info:
        bare.create(vm("web", bridge="lan"), plug=False)
    assert info.value.field == "spec.template.spec.networks[1].multus.networkName"
    assert "no bridge networks" in info.value.problem


def test_a_bridge_gone_before_start_fails_the_plug(node: Node) -> None:
    spec = vm("web", bridge="lan")
    books = node.create(spec, plug=False)
    del node.links.links["br0"]
    with pytest.raises(FailedPrecondition, match=r"networks\[1\]\.multus\.networkName"):
        node.network.plug("default_web", spec, books)


def test_restart_reconcile_keeps_allocations_and_rebuilds_the_table(node: Node) -> None:
    for name in ("a", "b"):
        node.create(vm(name, ports=[{"port": 80}]))
    del node.firewall.tables[TABLE]
    restarted = Node(links=node.links, firewall=node.firewall)
    restarted.books = dict(node.books)
    restarted.network.reconcile(restarted.vms())
    assert len(restarted.elements("taps")) == 2 and len(restarted.dhcp.leases) == 2
    books = restarted.create(vm("c", ports=[{"port": 80}]))
    nic = books.nics[0]
    assert nic.ip == "10.250.0.4" and nic.ports[0].node_port == 30002


def test_reconcile_removes_leftovers_of_gone_and_stopped_vms(node: Node) -> None:
    for name in ("keep", "stopped", "gone"):
        node.create(vm(name))
    gone = node.books.pop("default_gone")
    stopped = node.books["default_stopped"]
    vms = node.vms()
    vms["default_stopped"] = (stopped[0], stopped[1], False)
    node.network._touched.clear()  # noqa: SLF001 - as if they were made long ago
    node.network.reconcile(vms)
    kept = node.books["default_keep"][1].nics[0].tap
    assert list(node.links.taps_made) == [kept] and node.elements("taps") == [kept]
    gone_nic = gone[1].nics[0]
    assert gone_nic.ip in node.conntrack.forgotten
    assert gone_nic.tap in node.links.deleted


def test_reconcile_remakes_missing_taps_of_running_vms(node: Node) -> None:
    books = node.create(vm("web"))
    tap = books.nics[0].tap
    node.links.taps_made.clear()
    restarted = Node(links=node.links, firewall=node.firewall)
    restarted.books = dict(node.books)
    restarted.network.reconcile(restarted.vms())
    assert tap in node.links.taps_made and tap in restarted.dhcp.leases


def test_repair_restores_a_deleted_table_and_a_deleted_tap(node: Node) -> None:
    books = node.create(vm("web", ports=[{"port": 80}]))
    tap = books.nics[0].tap
    rules = node.firewall.rule_count(*TABLE)
    del node.firewall.tables[TABLE]
    node.links.taps_made.pop(tap)
    node.dhcp.opened.clear()
    node.network.repair(node.books)
    assert node.firewall.rule_count(*TABLE) == rules and node.elements("taps") == [tap]
    assert tap in node.links.taps_made
    assert node.dhcp.opened == [tap]  # a new socket for the new link


def test_repair_rebuilds_a_table_edited_by_hand(node: Node) -> None:
    node.create(vm("web"))
    node.firewall.tables[TABLE].sets["taps"]["elems"].clear()
    node.network.repair(node.books)
    assert len(node.elements("taps")) == 1
    transactions = len(node.firewall.transactions)
    node.network.repair(node.books)  # healthy: nothing to do
    assert len(node.firewall.transactions) == transactions


def test_update_of_a_running_vm_keeps_what_its_plumbing_uses(node: Node) -> None:
    spec = vm("web")
    books = node.create(spec)
    used = books.nics[0].ip
    bare = parse_vm(
        {
            "metadata": {"namespace": "default", "name": "web", "uid": spec.uid},
            "spec": {"template": {"spec": {"domain": {"memory": {"guest": "64Mi"}}}}},
        }
    )
    without = node.network.allocate("default_web", bare, books)
    assert without is None
    assert node.create(vm("other")).nics[0].ip != used


def test_a_vm_without_interfaces_needs_nothing(node: Node) -> None:
    bare = parse_vm(
        {
            "metadata": {"namespace": "default", "name": "bare"},
            "spec": {"template": {"spec": {"domain": {"memory": {"guest": "64Mi"}}}}},
        }
    )
    books = node.network.allocate("default_bare", bare, None)
    assert node.network.nics("default_bare", bare, books) == ()
    node.network.plug("default_bare", bare, books)
    node.network.unplug("default_bare", bare, books)
    assert node.network.interfaces("default_bare", bare, books) == ()


def test_interfaces_without_allocation_cannot_start(node: Node) -> None:
    spec = vm("web")
    with pytest.raises(FailedPrecondition, match="no network allocation"):
        node.network.plug("default_web", spec, None)


def test_unplug_survives_nft_failing_and_repair_converges(node: Node) -> None:
    node.create(vm("web"))
    node.create(vm("db"))
    node.firewall.fail_next = 2  # the update and the rebuild
    node.delete("default_web")  # the VM is gone: its delete must not fail over nft
    assert node.links.taps_made.keys() == {node.books["default_db"][1].nics[0].tap}
    assert len(node.elements("taps")) == 2  # stale for now
    node.network.repair(node.books)
    assert len(node.elements("taps")) == 1


def test_guest_egress_to_metadata_and_denied_networks_is_dropped_unless_allowed() -> None:
    config = dataclasses.replace(
        CONFIG, egress_deny=("10.96.0.0/12",), egress_allow=("169.254.169.123/32",)
    )
    node = Node(config=config)
    node.network.reconcile({})
    node.create(vm("web"))
    prefixes = {(p["prefix"]["addr"], p["prefix"]["len"]) for p in node.elements("egress_deny")}
    assert prefixes == {("169.254.0.0", 16), ("10.96.0.0", 12)}  # link-local always
    assert node.elements("egress_allow") == [{"prefix": {"addr": "169.254.169.123", "len": 32}}]
