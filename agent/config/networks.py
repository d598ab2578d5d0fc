"""Checks of the VM network settings that name links and networks (bridges, egress CIDRs)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = [
    "bridge_pairs",
    "check_bridge_networks",
    "check_interface_name",
    "check_ip_network",
    "check_ipv4_network",
]


def check_interface_name(value: str) -> None:
    if len(value) > 15:
        raise ValueError(f"{value!r} is longer than an interface name")


def _bridge_network(value: str) -> tuple[str, str]:
    name, sep, bridge = value.partition("=")
    if not sep or not name.strip() or not bridge.strip() or name != name.strip():
        raise ValueError(f"{value!r} is not NAME=BRIDGE")
    check_interface_name(bridge)
    return name, bridge


def check_bridge_networks(values: list[str]) -> None:
    seen = set()
    for value in values:
        name, _ = _bridge_network(value)
        if name in seen:
            raise ValueError(f"{name!r} is given twice")
        seen.add(name)


def bridge_pairs(values: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``NAME=BRIDGE`` settings as (name, host bridge) pairs, in the order given."""
    return tuple(_bridge_network(value) for value in values)


def check_ipv4_network(value: str) -> None:
    try:
        ipaddress.IPv4Network(value, strict=True)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 network such as 10.96.0.0/12") from None


def check_ip_network(value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise ValueError(f"{value!r} is not a network such as 192.168.10.0/24") from None
