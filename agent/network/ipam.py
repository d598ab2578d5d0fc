"""The ledger of the node's VM network: which VM holds which IP, MAC, tap and node port.

Pure and in memory. It is rebuilt from the allocations stored in every VM's bookkeeping
(``reset``) before anything new is handed out, which makes allocation restart-safe: libvirt's
domain metadata is the only record. Not thread-safe by itself: callers serialise.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from agent.errors import FailedPrecondition
from agent.models import VMAllocation
from agent.network import names

__all__ = ["Ledger", "parse_cidr", "parse_pool", "parse_port_range"]


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    """An IPv4 network with room for a gateway and at least one guest (/30 or larger)."""
    network = ipaddress.IPv4Network(text, strict=True)
    if network.prefixlen > 30:
        raise ValueError(f"{text} is too small: a /30 or larger is needed")
    return network


def parse_pool(text: str, cidr: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    """The node's pool: a subnet of the cluster's VM network with room for a guest."""
    pool = ipaddress.IPv4Network(text, strict=True)
    if not pool.subnet_of(cidr):
        raise ValueError(f"{text} is not inside the VM network {cidr}")
    guests = _guest_range(pool, cidr)
    if guests[0] > guests[1]:
        raise ValueError(f"{text} holds no guest address (the gateway and {cidr}'s edges are out)")
    return pool


def _guest_range(pool: ipaddress.IPv4Network, cidr: ipaddress.IPv4Network) -> tuple[int, int]:
    """First and last address of ``pool`` a guest may get: never the cluster network's own
    address, broadcast or gateway (its first host, the same on every node)."""
    first = max(int(pool.network_address), int(cidr.network_address) + 2)
    last = min(int(pool.broadcast_address), int(cidr.broadcast_address) - 1)
    return first, last


def parse_port_range(text: str) -> tuple[int, int]:
    """``"30000-32767"`` → (30000, 32767)."""
    low_text, sep, high_text = text.partition("-")
    if not sep or not low_text.isdigit() or not high_text.isdigit():
        raise ValueError(f"{text!r} is not a range like 30000-32767")
    low, high = int(low_text), int(high_text)
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{text!r} is not within 1-65535 (low first)")
    return low, high


class Ledger:
    """Who holds what, keyed by domain name.

    ``cidr`` is the cluster-wide VM network (the guest's mask; its first host is the gateway
    on every node); ``pool`` the part of it this node hands addresses out from (default: all
    of it). An address outside the pool can still be claimed, for a guest that migrated in
    from another node: it is held like any other and never handed out while claimed.

    Usage::

        ledger = Ledger(parse_cidr("10.250.0.0/16"), (30000, 32767))
        ledger.reset(allocations_from_all_books)
        ip = ledger.free_ip()               # "10.250.0.2": .1 is the gateway
        ledger.claim("default_web", allocation)
        ledger.release("default_web")
    """

    def __init__(
        self,
        cidr: ipaddress.IPv4Network,
        node_ports: tuple[int, int],
        pool: ipaddress.IPv4Network | None = None,
    ) -> None:
        self.cidr = cidr
        self.pool = pool or cidr
        if not self.pool.subnet_of(cidr):
            raise ValueError(f"pool {self.pool} is not inside the VM network {cidr}")
        self.node_ports = node_ports
        self.gateway = str(cidr.network_address + 1)  # the first host address
        self._first_guest, self._last_guest = _guest_range(self.pool, cidr)
        self._claims: dict[str, VMAllocation] = {}
        self._holders: dict[tuple[str, str], str] = {}
        self._groups: dict[int, dict[str, int]] = {}  # group -> namespace -> VMs

    # -- reading --------------------------------------------------------------------------

    def holder(self, kind: str, key: str) -> str | None:
        """The domain holding ``key`` of ``kind`` ("ip", "mac", "tap", "port" as "TCP/30080")."""
        return self._holders.get((kind, key))

    def claims(self) -> Mapping[str, VMAllocation]:
        return dict(self._claims)

    def group_for(self, namespace: str) -> int:
        """The isolation group of a namespace: the one its VMs have, else a free one."""
        for group, members in self._groups.items():
            if namespace in members:
                return group
        for attempt in range(1 << 16):
            group = names.namespace_group(namespace, attempt)
            if group not in self._groups:
                return group
        raise FailedPrecondition("no free isolation group for a new namespace")

    def free_ip(self, exclude: Iterable[str] = ()) -> str:
        """The lowest address of the node's pool nobody holds."""
        skip = set(exclude)
        for value in range(self._first_guest, self._last_guest + 1):
            address = str(ipaddress.IPv4Address(value))
            if ("ip", address) not in self._holders and address not in skip:
                return address
        where = f"the VM network {self.cidr}"
        if self.pool != self.cidr:
            where = f"this node's pool {self.pool} of {where}"
        raise FailedPrecondition(f"{where} has no free address left")

    def free_node_port(self, protocol: str, exclude: Iterable[int] = ()) -> int:
        """The lowest node port of ``protocol`` in the range that nobody holds."""
        skip = set(exclude)
        low, high = self.node_ports
        for port in range(low, high + 1):
            if ("port", f"{protocol}/{port}") not in self._holders and port not in skip:
                return port
        raise FailedPrecondition(f"no free {protocol} node port left in {low}-{high}")

    def conflicts(self, domain: str, allocation: VMAllocation) -> list[str]:
        """What claiming ``allocation`` for ``domain`` would collide with (claims nothing)."""
        conflicts = []
        for key in _keys(allocation):
            holder = self._holders.get(key, domain)
            if holder != domain:
                conflicts.append(f"{key[0]} {key[1]} is held by {holder}")
        return conflicts

    # -- changing -------------------------------------------------------------------------

    def claim(self, domain: str, allocation: VMAllocation) -> list[str]:
        """Record what ``domain`` holds (replacing its earlier claim).

        Returns the conflicts (keys another domain already holds; those stay with the other
        domain); ``allocate_vm`` never produces any, so they only come from damaged records.
        """
        self.release(domain)
        conflicts = []
        self._claims[domain] = allocation
        members = self._groups.setdefault(allocation.group, {})
        members[allocation.namespace] = members.get(allocation.namespace, 0) + 1
        for key in _keys(allocation):
            holder = self._holders.setdefault(key, domain)
            if holder != domain:
                conflicts.append(f"{key[0]} {key[1]} is held by {holder}")
        return conflicts

    def release(self, domain: str) -> None:
        allocation = self._claims.pop(domain, None)
        if allocation is None:
            return
        for key in _keys(allocation):
            if self._holders.get(key) == domain:
                del self._holders[key]
        members = self._groups.get(allocation.group, {})
        members[allocation.namespace] = members.get(allocation.namespace, 1) - 1
        if members.get(allocation.namespace, 0) <= 0:
            members.pop(allocation.namespace, None)
        if not members:
            self._groups.pop(allocation.group, None)

    def reset(self, allocations: Mapping[str, VMAllocation]) -> list[str]:
        """Forget everything and claim ``allocations`` (from all the VMs' books) in name order."""
        self._claims.clear()
        self._holders.clear()
        self._groups.clear()
        conflicts = []
        for domain in sorted(allocations):
            conflicts += [f"{domain}: {c}" for c in self.claim(domain, allocations[domain])]
        return conflicts


def _keys(allocation: VMAllocation) -> list[tuple[str, str]]:
    keys = []
    for nic in allocation.nics:
        keys += [("tap", nic.tap), ("mac", nic.mac)]
        if nic.ip:
            keys.append(("ip", nic.ip))
        keys += [("port", f"{p.protocol}/{p.node_port}") for p in nic.ports]
    return keys
