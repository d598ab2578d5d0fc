"""What the metrics core needs from outside: the hypervisor's bulk stats and the node's VMs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["DomainStats", "DomainStatsSource", "NodeFacts", "VMView"]

StatValue = int | float | str


@dataclass(frozen=True, slots=True)
class DomainStats:
    """One domain's record from a bulk stats call: libvirt's flat ``key → value`` map
    (``cpu.time``, ``net.0.rx.bytes``, ``balloon.rss`` ...), units as libvirt gives them."""

    name: str
    stats: dict[str, StatValue] = field(default_factory=dict)


class DomainStatsSource(Protocol):
    """Bulk stats of every running or paused domain in one call that never waits for a
    domain's job (libvirt's NOWAIT); raises the agent's Unavailable when disconnected."""

    def all_domain_stats(self) -> list[DomainStats]: ...


@dataclass(frozen=True, slots=True)
class VMView:
    """A VM as the metrics see it: identity only (bounded label values), never user labels."""

    domain: str
    namespace: str
    name: str
    phase: str  # KubeVirt's spelling: lower case ("running", "paused", ...)
    machine_type: str = ""
    os: str = ""
    nic_names: dict[str, str] = field(default_factory=dict)  # tap → spec interface name


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """The node's size and the agent's virtualization type."""

    name: str
    cpus: int
    memory_bytes: int
    reserved_memory_bytes: int
    virt_type: str
