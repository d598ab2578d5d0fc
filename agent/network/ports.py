"""The small ports the VM network needs from the node: links, nftables, conntrack, DHCP.

Owned by their one consumer (``agent.network.service``), KubeVirt-style; the real adapters
are ``agent.adapters.netlink``, ``agent.adapters.nft`` and ``agent.adapters.conntrack``, and
tests use the fakes in ``tests/unit/network_fakes.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from agent.errors import AgentError
from agent.network.dhcp import Lease
from agent.network.plan import TapPlan

__all__ = ["ConnTracker", "DhcpService", "Firewall", "Links", "NetworkError", "TapInfo"]


class NetworkError(AgentError):
    """The node's network stack refused a change (netlink, nft); the message says which."""


@dataclass(frozen=True, slots=True)
class TapInfo:
    """A link the agent made, as found on the node (measured in one pass for all taps)."""

    name: str
    alias: str
    routes: tuple[str, ...] = ()  # destinations of its /32 routes
    mtu: int = 0
    mac: str = ""
    group: int = 0
    bridge: str = ""  # the name of its master, if any
    up: bool = True
    carrier: bool = True  # False: no process holds the tap open (a guest's NIC is cut off)
    addresses: tuple[str, ...] = ()  # its IPv4 addresses
    neighbours: tuple[tuple[str, str], ...] = ()  # permanent (ip, mac) entries through it
    proxy_arp: bool = False
    ipv6_disabled: bool = True  # (True where the node has no IPv6)


class Links(Protocol):
    """Network links of the node.

    Usage::

        links.ensure_tap(plan, replace=True)   # create or repair; True if created
        links.taps()                            # {name: TapInfo} of the agent's links
        links.taps(measure=True)                # ... with all the resync compares
        links.delete_tap("va1a2b3c4d5e6f")      # a missing tap is fine
    """

    def ensure_tap(self, plan: TapPlan, *, replace: bool) -> bool: ...
    def delete_tap(self, name: str) -> None: ...
    def taps(self, *, measure: bool = False) -> dict[str, TapInfo]: ...
    def mtu(self, name: str) -> int | None: ...
    def kind(self, name: str) -> str | None: ...
    def default_route_interface(self) -> str | None: ...
    def enable_forwarding(self) -> bool: ...  # True: it was off and is on now


class Firewall(Protocol):
    """nftables: one atomic transaction per call, and listings of one table."""

    def apply(self, commands: list[dict[str, Any]]) -> None: ...
    def list_table(self, family: str, name: str) -> list[dict[str, Any]] | None: ...


class ConnTracker(Protocol):
    """The kernel's connection tracking table."""

    def forget(self, address: str) -> int: ...


class DhcpService(Protocol):
    """Answers DHCP for one guest per tap (``agent.network.dhcpd.DhcpServer``)."""

    def serve(self, tap: str, lease: Lease) -> None: ...
    def stop_serving(self, tap: str) -> None: ...
    def serving(self) -> dict[str, Lease]: ...
