"""A VM defined by an agent before the typed network allocation is adopted with what it held.

The fixture is the domain XML (with the agent's metadata) that the agent wrote before its
bookkeeping carried the allocation as a typed field; an upgraded agent must read it back and
keep the guest's address, MAC, tap and node port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.adapters.libvirt import LibvirtHypervisor
from agent.adapters.qemuimg import QemuImg
from agent.domain.files import VMFiles
from agent.domain.lifecycle import VMService
from agent.domain.vmcache import VMCache
from agent.network.plan import NetworkConfig
from agent.network.service import RoutedNetwork
from tests.unit.golden_files import GOLDEN
from tests.unit.network_fakes import FakeConntrack, FakeDhcp, FakeFirewall, FakeLinks

FIXTURE = GOLDEN / "domain_before_typed_allocation.xml"
CONFIG = NetworkConfig(
    cidr=ipaddress.IPv4Network("10.250.0.0/16"), node_ports=(30000, 32767), uplink="eth0"
)


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[LibvirtHypervisor]:
    node_xml = tmp_path / "node.xml"
    node_xml.write_text("<node/>")
    hypervisor = LibvirtHypervisor(f"test://{node_xml}")
    hypervisor.open()
    try:
        yield hypervisor
    finally:
        hypervisor.close()


def test_a_vm_from_before_the_upgrade_keeps_address_mac_tap_and_node_port(
    hv: LibvirtHypervisor, tmp_path: Path
) -> None:
    hv.define(FIXTURE.read_text())
    hv.start("tenant-a_web")  # it was running when the agent was upgraded
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

    nic = service.get("tenant-a", "web").status.interfaces[0]
    assert (nic.ip_addresses, nic.mac, nic.tap_name) == (
        ("10.250.0.3",),
        "52:54:00:9a:8b:9f",
        "vad8306c3ebad9",
    )
    assert [(p.port, p.node_port) for p in nic.published_ports] == [(80, 30001)]
    # What it holds is held: a new VM gets neither its address nor its node port.
    held = network.ledger
    assert held.holder("ip", "10.250.0.3") == "tenant-a_web"
    assert held.holder("port", "TCP/30001") == "tenant-a_web"
