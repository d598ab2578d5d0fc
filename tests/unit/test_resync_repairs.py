"""The periodic resync's repair decisions: RoutedNetwork.repair against stateful fakes.

What the node holds is measured in one pass; only what differs is rewritten, each repair is
reported by kind, and a node where all is in place sees no write at all.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.network.drift import cut_off, tap_drift
from agent.network.plan import TapPlan
from agent.ports import NetworkRepair
from tests.unit.network_fakes import FakeLinks
from tests.unit.test_network_service import TABLE, Node, vm


def running(node: Node, *names: str) -> tuple[str, ...]:
    """Create running VMs: plugged, their taps held open by QEMU."""
    for name in names:
        books = node.create(vm(name))
        node.links.plug_in(*(nic.tap for nic in books.nics))
    return tuple(node.books)


def tap_of(node: Node, domain: str) -> str:
    return node.books[domain][1].nics[0].tap  # type: ignore[union-attr]


@pytest.fixture
def node() -> Node:
    node = Node()
    node.network.reconcile({})
    node.network.start()
    return node


def test_nothing_is_written_when_all_is_in_place(node: Node) -> None:
    domains = running(node, "web", "db", "cache")
    node.links.ensured.clear()
    transactions = len(node.firewall.transactions)
    for _ in range(3):
        assert node.network.repair(domains) == ()
    assert node.links.ensured == [] and len(node.firewall.transactions) == transactions
    assert node.network.cut_off("default_web") == ""


@pytest.mark.parametrize(
    ("damage", "kind"),
    [
        ({"routes": ()}, "route"),
        ({"neighbours": ()}, "neighbour"),
        ({"neighbours": (("10.250.0.2", "52:54:00:00:00:99"),)}, "neighbour"),
        ({"proxy_arp": False}, "sysctl"),
        ({"ipv6_disabled": False}, "sysctl"),
        ({"addresses": ()}, "address"),
        ({"up": False}, "link"),
        ({"mtu": 1280}, "link"),
    ],
)
def test_what_was_changed_by_hand_is_put_back_once(
    node: Node, damage: dict[str, Any], kind: str
) -> None:
    domains = running(node, "web", "db")
    tap = tap_of(node, "default_web")
    node.links.ensured.clear()
    node.links.damaged[tap] = damage
    assert node.network.repair(domains) == (NetworkRepair(kind, "default_web", tap),)
    assert node.links.ensured == [tap]  # the other VM's tap is not touched
    assert node.network.repair(domains) == ()  # in place now
    assert node.links.ensured == [tap]
    assert node.network.cut_off("default_web") == ""  # QEMU still holds the tap


def test_a_deleted_route_and_neighbour_are_two_repairs(node: Node) -> None:
    domains = running(node, "web")
    tap = tap_of(node, "default_web")
    node.links.damaged[tap] = {"routes": (), "neighbours": ()}
    kinds = [r.kind for r in node.network.repair(domains)]
    assert kinds == ["route", "neighbour"]


def test_a_deleted_table_and_forwarding_turned_off_come_back(node: Node) -> None:
    domains = running(node, "web")
    rules = node.firewall.rule_count(*TABLE)
    del node.firewall.tables[TABLE]
    node.links.forwarding = False
    repairs = node.network.repair(domains)
    assert {(r.kind, r.domain) for r in repairs} == {("sysctl", ""), ("nft_table", "")}
    assert node.firewall.rule_count(*TABLE) == rules and len(node.elements("taps")) == 1
    assert node.links.forwarding
    assert node.network.repair(domains) == ()


def test_dhcp_that_stopped_answering_is_served_again(node: Node) -> None:
    domains = running(node, "web")
    tap = tap_of(node, "default_web")
    node.dhcp.stop_serving(tap)
    assert node.network.repair(domains) == (NetworkRepair("dhcp", "default_web", tap),)
    assert tap in node.dhcp.leases


def test_a_tap_deleted_under_a_running_guest_marks_its_network_cut_off(node: Node) -> None:
    domains = running(node, "web", "db")
    tap = tap_of(node, "default_web")
    node.links.delete_by_hand(tap)
    repairs = node.network.repair(domains)
    assert repairs == (NetworkRepair("tap", "default_web", tap),)
    assert tap in node.links.taps_made and tap in node.dhcp.leases
    why = node.network.cut_off("default_web")
    assert tap in why and "restart" in why
    assert node.network.cut_off("default_db") == ""
    # The new tap is in place but no QEMU holds it: still cut off, nothing rewritten.
    assert node.network.repair(domains) == () and node.network.cut_off("default_web") == why
    # A hard restart: the VM is plugged again and a new QEMU opens the tap.
    spec, books = node.books["default_web"]
    node.network.plug("default_web", spec, books)
    node.links.plug_in(tap)
    assert node.network.cut_off("default_web") == ""
    assert node.network.repair(domains) == () and node.network.cut_off("default_web") == ""


def test_only_the_running_vms_named_are_repaired(node: Node) -> None:
    running(node, "web", "db")
    web, db = tap_of(node, "default_web"), tap_of(node, "default_db")
    node.links.damaged[web] = {"routes": ()}
    node.links.damaged[db] = {"routes": ()}
    # db is held by a verb (or stopped): left alone; a VM never plugged here is ignored.
    repairs = node.network.repair({"default_web", "default_ghost"})
    assert repairs == (NetworkRepair("route", "default_web", web),)
    assert node.links.ensured[-1:] == [web] and db not in node.links.ensured[-1:]


def test_a_deleted_vm_is_not_plugged_again(node: Node) -> None:
    domains = running(node, "web")
    tap = tap_of(node, "default_web")
    node.delete("default_web")
    assert node.network.repair(domains) == ()  # (its name came from an older list)
    assert tap not in node.links.taps_made


def test_reconcile_rewrites_nothing_that_is_in_place() -> None:
    first = Node()
    first.network.reconcile({})
    running(first, "web", "db")
    restarted = Node(links=first.links, firewall=first.firewall)
    restarted.books = dict(first.books)
    first.links.ensured.clear()
    transactions = len(first.firewall.transactions)
    assert restarted.network.reconcile(restarted.vms()) == ()
    assert first.links.ensured == [] and len(first.firewall.transactions) == transactions


def test_reconcile_reports_the_routes_it_put_back() -> None:
    first = Node()
    first.network.reconcile({})
    running(first, "web")
    tap = tap_of(first, "default_web")
    first.links.damaged[tap] = {"routes": ()}
    restarted = Node(links=first.links, firewall=first.firewall)
    restarted.books = dict(first.books)
    assert restarted.network.reconcile(restarted.vms()) == (
        NetworkRepair("route", "default_web", tap),
    )


def test_drift_of_a_bridge_tap_is_its_link_only() -> None:
    plan = TapPlan("vb1", "virt-agent:x", "fe:54:00:00:00:01", 9000, False, bridge="br0")
    links = FakeLinks()
    links.ensure_tap(plan, replace=True)
    links.plug_in("vb1")
    assert tap_drift(plan, links.taps()["vb1"]) == ()
    links.damaged["vb1"] = {"bridge": ""}  # taken out of its bridge by hand
    assert tap_drift(plan, links.taps()["vb1"]) == ("link",)
    assert cut_off((plan,), links.taps()) == ""
    assert "vb1" in cut_off((plan,), {})
