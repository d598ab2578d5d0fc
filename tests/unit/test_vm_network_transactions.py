"""A VM's network allocation lives and dies with its domain definition (libvirt test driver)."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.adapters.libvirt import LibvirtHypervisor
from agent.adapters.qemuimg import QemuImg
from agent.domain.files import VMFiles
from agent.domain.lifecycle import VMService
from agent.domain.vmcache import VMCache
from agent.errors import AgentError, FailedPrecondition
from agent.models import VMSpec
from agent.network.plan import NetworkConfig
from agent.network.service import RoutedNetwork
from agent.spec import parse_vm
from tests.unit.network_fakes import FakeConntrack, FakeDhcp, FakeFirewall, FakeLinks

CONFIG = NetworkConfig(
    cidr=ipaddress.IPv4Network("10.250.0.0/16"), node_ports=(30000, 30099), uplink="eth0"
)


def vm(namespace: str, name: str, *, nic: bool = True, image: str = "") -> VMSpec:
    devices: dict[str, Any] = {}
    networks: list[dict[str, Any]] = []
    instance: dict[str, Any] = {}
    if image:
        devices["disks"] = [{"name": "root", "disk": {"bus": "virtio"}}]
        instance["volumes"] = [{"name": "root", "imageFile": {"path": image}}]
    if nic:
        devices["interfaces"] = [{"name": "default", "masquerade": {}, "ports": [{"port": 80}]}]
        networks = [{"name": "default", "pod": {}}]
    spec: dict[str, Any] = {
        "domain": {"memory": {"guest": "64Mi"}, "devices": devices},
        "networks": networks,
        **instance,
    }
    return parse_vm(
        {
            "metadata": {
                "namespace": namespace,
                "name": name,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{namespace}/{name}")),
            },
            "spec": {"runStrategy": "Halted", "template": {"spec": spec}},
        }
    )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[VMService, RoutedNetwork]]:
    node_xml = tmp_path / "node.xml"
    node_xml.write_text("<node/>")
    hv = LibvirtHypervisor(f"test://{node_xml}")
    hv.open()
    network = RoutedNetwork(
        CONFIG, FakeLinks(), FakeFirewall(), FakeConntrack(), FakeDhcp(),
        ready_timeout=1,
    )  # fmt: skip
    service = VMService(
        hv,
        VMFiles(str(tmp_path / "state"), [str(tmp_path)], QemuImg()),
        VMCache(),
        node_name="node-1",
        virt_type="qemu",
        network=network,
    )
    service.resync()
    try:
        yield service, network
    finally:
        hv.close()


def test_a_failed_apply_keeps_the_address_and_node_port_of_the_vm(
    node: tuple[VMService, RoutedNetwork],
) -> None:
    service, _ = node
    first, _ = service.apply(vm("tenant-a", "web"))
    held = first.status.interfaces[0]
    # A changed spec that drops the NIC and cannot be defined (its image is missing).
    with pytest.raises(AgentError, match="missing.qcow2"):
        service.apply(vm("tenant-a", "web", nic=False, image="missing.qcow2"))
    # The VM still holds what its libvirt bookkeeping says...
    assert service.get("tenant-a", "web").status.interfaces[0].ip_addresses == held.ip_addresses
    # ...so another tenant's new VM gets neither its address nor its node port.
    other, _ = service.apply(vm("tenant-b", "db"))
    nic = other.status.interfaces[0]
    assert nic.ip_addresses != held.ip_addresses
    assert nic.published_ports[0].node_port != held.published_ports[0].node_port


def test_plugging_a_claim_that_conflicts_is_refused_and_plugs_nothing(
    node: tuple[VMService, RoutedNetwork],
) -> None:
    service, network = node
    record, _ = service.apply(vm("tenant-a", "web"))
    taken = record.books.network
    assert taken is not None
    intruder = vm("tenant-b", "db")
    with pytest.raises(FailedPrecondition, match="10.250.0.2 is held by tenant-a_web"):
        network.plug("tenant-b_db", intruder, taken)
    assert network.ledger.holder("ip", "10.250.0.2") == "tenant-a_web"
    assert network.links.taps_made == {}
