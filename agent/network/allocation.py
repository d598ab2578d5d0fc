"""What a VM holds on the node's network (tap names, MACs, guest IP, node ports), and how
it gets it.

The allocation is stored in the VM's bookkeeping (``Bookkeeping.network``), that is in the
domain's metadata in libvirt: a restarted agent reads every allocation back before it
hands out anything (see ``Ledger.reset``), so nothing is given out twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from agent.errors import FailedPrecondition, InvalidSpec
from agent.models import Network, NicAllocation, VMAllocation, VMSpec
from agent.naming import vm_key
from agent.network import names
from agent.network.ipam import Ledger

__all__ = ["BRIDGE", "MASQUERADE", "allocate_vm", "incoming_allocation"]

MASQUERADE = "masquerade"
BRIDGE = "bridge"
_DEVICES = "spec.template.spec.domain.devices"
_TAP_ATTEMPTS = 16
_MAC_ATTEMPTS = 256


def allocate_vm(
    domain: str,
    spec: VMSpec,
    previous: VMAllocation | None,
    ledger: Ledger,
    *,
    bridges: Mapping[str, str] | None = None,
) -> VMAllocation:
    """The allocation for ``spec``: what ``previous`` held is kept, the rest is new.

    Raises InvalidSpec naming the field when the spec asks for something another VM holds
    (a MAC, a node port) or a node port outside the node's range. ``bridges`` maps a bridge
    network's name (multus.networkName) to its host bridge (see ``guards.allowed_bridges``;
    without it the name is the bridge, as in tests of the ledger). Does not claim anything:
    the caller claims the result in the ledger (under the same lock).
    """
    if previous is not None and previous.namespace != spec.namespace:
        previous = None
    group = previous.group if previous else ledger.group_for(spec.namespace)
    networks = {n.name: n for n in spec.networks}
    picked = _Picked()
    nics = []
    for index, iface in enumerate(spec.interfaces):
        before = previous.nic(iface.name) if previous else None
        if before is not None and before.binding != iface.binding:
            before = None
        field = f"{_DEVICES}.interfaces[{index}]"
        tap = before.tap if before else _free_tap(domain, iface.name, ledger, picked)
        mac = _mac(domain, spec.uid, iface.name, iface.mac_address, before, ledger, picked, field)
        network = networks.get(iface.name, Network(iface.name))
        if iface.binding == BRIDGE:
            bridge = network.network_name
            if bridges is not None:
                bridge = bridges[bridge]
            nics.append(NicAllocation(iface.name, BRIDGE, tap, mac, bridge=bridge))
            continue
        ip = before.ip if before and before.ip else ledger.free_ip(exclude=picked.ips)
        picked.ips.add(ip)
        ports = []
        for j, port in enumerate(iface.ports):
            node_port = _node_port(
                domain, port.protocol, port.port, port.node_port, before, ledger, picked,
                f"{field}.ports[{j}].nodePort",
            )  # fmt: skip
            ports.append(dataclasses.replace(port, node_port=node_port))
        nics.append(NicAllocation(iface.name, MASQUERADE, tap, mac, ip=ip, ports=tuple(ports)))
    return VMAllocation(spec.namespace, group, tuple(nics))


def incoming_allocation(incoming: VMAllocation, ledger: Ledger, domain: str) -> VMAllocation:
    """What a VM migrating in keeps for ``allocate_vm`` on this node: its taps, MACs and
    addresses (FailedPrecondition when another VM here holds one: overlapping pools), its
    node ports where free here; its isolation group is this node's for its namespace."""
    nics = []
    for nic in incoming.nics:
        for kind, key in (("ip", nic.ip), ("mac", nic.mac), ("tap", nic.tap)):
            holder = ledger.holder(kind, key) if key else None
            if holder not in (None, domain):
                raise FailedPrecondition(
                    f"interface {nic.name}: {kind} {key} is held by vm {_vm(holder)} on this "
                    "node (do the nodes' --node-vm-pool overlap?)"
                )
        low, high = ledger.node_ports
        ports = tuple(
            p
            for p in nic.ports
            if low <= p.node_port <= high
            and ledger.holder("port", f"{p.protocol}/{p.node_port}") in (None, domain)
        )
        nics.append(dataclasses.replace(nic, ports=ports))
    group = ledger.group_for(incoming.namespace)
    return VMAllocation(incoming.namespace, group, tuple(nics))


class _Picked:
    """What one allocation took so far (the ledger only knows earlier claims)."""

    def __init__(self) -> None:
        self.ips: set[str] = set()
        self.macs: set[str] = set()
        self.taps: set[str] = set()
        self.ports: set[tuple[str, int]] = set()


def _free_tap(domain: str, iface: str, ledger: Ledger, picked: _Picked) -> str:
    for attempt in range(_TAP_ATTEMPTS):
        name = names.tap_name(domain, iface, attempt)
        if ledger.holder("tap", name) in (None, domain) and name not in picked.taps:
            picked.taps.add(name)
            return name
    raise RuntimeError(f"no free tap name for {domain}/{iface}")  # needs 16 hash collisions


def _mac(
    domain: str,
    uid: str,
    iface: str,
    requested: str,
    before: NicAllocation | None,
    ledger: Ledger,
    picked: _Picked,
    field: str,
) -> str:
    if requested:
        holder = ledger.holder("mac", requested)
        if holder not in (None, domain) or requested in picked.macs:
            raise InvalidSpec(f"{field}.macAddress", f"{requested} is used by vm {_vm(holder)}")
        picked.macs.add(requested)
        return requested
    if before is not None:
        picked.macs.add(before.mac)
        return before.mac
    for attempt in range(_MAC_ATTEMPTS):
        mac = names.guest_mac(uid, iface, attempt)
        if ledger.holder("mac", mac) in (None, domain) and mac not in picked.macs:
            picked.macs.add(mac)
            return mac
    raise RuntimeError(f"no free MAC address for {domain}/{iface}")


def _node_port(
    domain: str,
    protocol: str,
    port: int,
    requested: int,
    before: NicAllocation | None,
    ledger: Ledger,
    picked: _Picked,
    field: str,
) -> int:
    if requested:
        low, high = ledger.node_ports
        if not low <= requested <= high:
            raise InvalidSpec(field, f"{requested} is outside the node-port range {low}-{high}")
        holder = ledger.holder("port", f"{protocol}/{requested}")
        if holder not in (None, domain) or (protocol, requested) in picked.ports:
            raise InvalidSpec(field, f"{protocol} {requested} is published by vm {_vm(holder)}")
        picked.ports.add((protocol, requested))
        return requested
    ports = before.ports if before else ()
    earlier = [p.node_port for p in ports if (p.protocol, p.port) == (protocol, port)]
    previous = earlier[0] if earlier else 0
    if previous and (protocol, previous) not in picked.ports:
        picked.ports.add((protocol, previous))
        return previous
    chosen = ledger.free_node_port(
        protocol, exclude={p for proto, p in picked.ports if proto == protocol}
    )
    picked.ports.add((protocol, chosen))
    return chosen


def _vm(domain: str | None) -> str:
    return "(this vm)" if domain is None else vm_key(domain)
