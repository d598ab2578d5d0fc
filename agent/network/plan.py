"""Spec + allocation → what the node must have for a VM: taps, DHCP leases, nft elements.

Pure. ``plumbing`` is the whole plan of one VM; ``nic_backings`` feeds the domain XML and
``interface_statuses`` the VM's status. The service applies plans through its ports.

The masquerade binding is routed and bridge-less: each tap is a point-to-point link that
carries the gateway address as a /32, answers ARP for everything by proxy ARP, and has a
/32 route to its guest's address; the guest gets the VM CIDR's mask (so the gateway is
on-link) and reaches every other address through the node.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from agent.models import InterfaceStatus, NicAllocation, NicBacking, VMAllocation, VMSpec
from agent.network import names
from agent.network.allocation import BRIDGE, MASQUERADE
from agent.network.dhcp import INFINITE, Lease
from agent.network.ruleset import FirewallState, Forward

__all__ = [
    "DEFAULT_TABLE",
    "NetworkConfig",
    "Plumbing",
    "TapPlan",
    "interface_statuses",
    "nic_backings",
    "plumbing",
    "resolv_conf_nameservers",
]

DEFAULT_TABLE = "virt_agent"
MAX_QUEUES = 256  # KubeVirt's cap for virtio-net queues


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """The node's VM network settings (from ``--vm-cidr`` and friends).

    ``cidr`` is the cluster-wide VM network, the same on every node (guest mask, gateway);
    ``pool`` the part of it this node hands out (``--node-vm-pool``; None: all of it).
    """

    cidr: ipaddress.IPv4Network
    pool: ipaddress.IPv4Network | None = None
    node_ports: tuple[int, int] = (24000, 24999)
    uplink: str = ""
    dns: tuple[str, ...] = ()
    table: str = DEFAULT_TABLE
    lease_seconds: int = INFINITE
    # The operator's bridge networks (``--bridge-network NAME=BRIDGE``): the only host
    # bridges a VM can join, named by multus.networkName. None: bridge binding is refused.
    bridges: tuple[tuple[str, str], ...] = ()
    # Guest egress (``--egress-deny``/``--egress-allow``): link-local is always denied.
    egress_deny: tuple[str, ...] = ()
    egress_allow: tuple[str, ...] = ()

    @property
    def gateway(self) -> str:
        return str(self.cidr.network_address + 1)


@dataclass(frozen=True, slots=True)
class TapPlan:
    """One tap as it must be. Routed taps have ``gateway`` and ``guest_ip``; bridge taps
    have ``bridge``."""

    name: str
    alias: str
    mac: str  # the host side's MAC
    mtu: int
    multi_queue: bool
    group: int = 0
    gateway: str = ""
    guest_ip: str = ""
    guest_mac: str = ""  # a permanent neighbour entry: ARP from the guest cannot move it
    bridge: str = ""


@dataclass(frozen=True, slots=True)
class Plumbing:
    """Everything the node has for one running VM."""

    domain: str
    taps: tuple[TapPlan, ...]
    leases: tuple[tuple[str, Lease], ...]  # (tap, lease) per routed NIC
    firewall: FirewallState
    addresses: tuple[str, ...]  # guest IPs, for conntrack cleanup


def resolv_conf_nameservers(text: str) -> tuple[str, ...]:
    """IPv4 ``nameserver`` lines of a resolv.conf that a guest can reach (not loopback)."""
    servers = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                address = ipaddress.IPv4Address(words[1])
            except ValueError:
                continue  # IPv6: DHCPv4 cannot carry it
            if not address.is_loopback and str(address) not in servers:
                servers.append(str(address))
    return tuple(servers)


def queues_for(spec: VMSpec, nic: str) -> int:
    """virtio-net queues: one per vCPU (multiqueue when there are several), unless the VM
    turns networkInterfaceMultiqueue off; emulated NIC models (e1000, ...) have one queue."""
    iface = next((i for i in spec.interfaces if i.name == nic), None)
    if iface is None or iface.model != "virtio":
        return 1
    if spec.hardware.network_interface_multiqueue is False:
        return 1
    return max(1, min(spec.cpu.vcpus, MAX_QUEUES))


def nic_backings(
    spec: VMSpec, allocation: VMAllocation, mtus: Mapping[str, int], uplink: str
) -> tuple[NicBacking, ...]:
    """The taps behind the spec's interfaces, for the domain XML."""
    backings = []
    for iface in spec.interfaces:
        nic = allocation.nic(iface.name)
        if nic is None:
            raise ValueError(f"interface {iface.name!r} has no allocation")
        link = nic.bridge if nic.binding == BRIDGE else uplink
        backings.append(
            NicBacking(
                name=nic.name,
                tap=nic.tap,
                mac=nic.mac,
                mtu=mtus.get(link, 0),
                queues=queues_for(spec, nic.name),
            )
        )
    return tuple(backings)


def plumbing(
    domain: str,
    spec: VMSpec,
    allocation: VMAllocation,
    config: NetworkConfig,
    mtus: Mapping[str, int],
) -> Plumbing:
    """The plan for one VM; ``mtus`` maps the uplink and bridges to their MTU."""
    taps = []
    leases = []
    sources = set()
    forwards = set()
    routed_taps = set()
    addresses = []
    for nic in allocation.nics:
        alias = names.tap_alias(domain, nic.name)
        host_mac = names.gateway_mac(nic.mac)
        multi_queue = queues_for(spec, nic.name) > 1
        if nic.binding == BRIDGE:
            mtu = mtus.get(nic.bridge, 0)
            taps.append(TapPlan(nic.tap, alias, host_mac, mtu, multi_queue, bridge=nic.bridge))
            continue
        if nic.binding != MASQUERADE:
            raise ValueError(f"interface {nic.name!r}: unknown binding {nic.binding!r}")
        mtu = mtus.get(config.uplink, 0)
        taps.append(
            TapPlan(
                nic.tap, alias, host_mac, mtu, multi_queue,
                group=allocation.group, gateway=config.gateway, guest_ip=nic.ip,
                guest_mac=nic.mac,
            )
        )  # fmt: skip
        leases.append((nic.tap, _lease(spec, nic, config, mtu)))
        routed_taps.add(nic.tap)
        sources.add((nic.tap, nic.ip, nic.mac))
        addresses.append(nic.ip)
        forwards |= {Forward(p.protocol.lower(), p.node_port, nic.ip, p.port) for p in nic.ports}
    firewall = FirewallState(
        taps=frozenset(routed_taps),
        sources=frozenset(sources),
        groups=frozenset({allocation.group}) if routed_taps else frozenset(),
        forwards=frozenset(forwards),
    )
    return Plumbing(domain, tuple(taps), tuple(leases), firewall, tuple(addresses))


def _lease(spec: VMSpec, nic: NicAllocation, config: NetworkConfig, mtu: int) -> Lease:
    """What the agent's DHCP server hands the guest on a masquerade NIC."""
    return Lease(
        mac=nic.mac,
        ip=nic.ip,
        prefix_len=config.cidr.prefixlen,
        router=config.gateway,
        server_id=config.gateway,
        dns=config.dns,
        mtu=mtu,
        hostname=spec.hostname or spec.name,
        lease_seconds=config.lease_seconds,
        owner=spec.key,
    )


def interface_statuses(spec: VMSpec, allocation: VMAllocation) -> tuple[InterfaceStatus, ...]:
    """What the VM's status says about each NIC (addresses known from the allocation)."""
    statuses = []
    for iface in spec.interfaces:
        nic = allocation.nic(iface.name)
        if nic is None:
            statuses.append(InterfaceStatus(name=iface.name))
            continue
        statuses.append(
            InterfaceStatus(
                name=nic.name,
                mac=nic.mac,
                ip_addresses=(nic.ip,) if nic.ip else (),
                tap_name=nic.tap,
                published_ports=nic.ports,
            )
        )
    return tuple(statuses)
