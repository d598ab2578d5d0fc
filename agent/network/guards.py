"""Checks that keep one VM's network out of another's (bridges, claims) and small helpers."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping

from agent.errors import FailedPrecondition, InvalidSpec
from agent.models import VMAllocation, VMSpec
from agent.network.allocation import BRIDGE
from agent.network.plan import Plumbing
from agent.network.ports import ConnTracker, Links, NetworkError

__all__ = [
    "allowed_bridges",
    "check_bridges",
    "describe",
    "forget_connections",
    "holding",
    "link_mtus",
    "precondition",
    "refuse_conflicts",
    "require_allocation",
]

log = logging.getLogger(__name__)

_NETWORKS = "spec.template.spec.networks"


def allowed_bridges(spec: VMSpec, bridges: Mapping[str, str]) -> dict[str, str]:
    """The host bridge of each of the spec's bridge networks, by network name.

    multus.networkName names one of the operator's bridge networks (KubeVirt's meaning: a
    network attachment, not a host link): a VM never picks a host link (cni0, docker0, the
    management bridge) by its name.
    """
    bridged = {i.name for i in spec.interfaces if i.binding == BRIDGE}
    chosen = {}
    for index, network in enumerate(spec.networks):
        if network.name not in bridged:
            continue
        field = f"{_NETWORKS}[{index}].multus.networkName"
        if not bridges:
            raise InvalidSpec(field, "this node has no bridge networks; bridge binding is off")
        if network.network_name not in bridges:
            raise InvalidSpec(
                field,
                f"{network.network_name!r} is not a bridge network of this node "
                f"(there are: {', '.join(sorted(bridges))})",
            )
        chosen[network.network_name] = bridges[network.network_name]
    return chosen


def check_bridges(
    links: Links,
    spec: VMSpec,
    allocation: VMAllocation,
    error: Callable[[str, str], Exception],
    allowed: Mapping[str, str],
) -> None:
    """Every bridge NIC's host link is still an operator's bridge network, exists and is a
    bridge; ``error(field, problem)`` if not."""
    for index, network in enumerate(spec.networks):
        nic = allocation.nic(network.name)
        if nic is None or nic.binding != BRIDGE:
            continue
        if nic.bridge not in allowed.values():
            raise error(
                f"{_NETWORKS}[{index}].multus.networkName",
                f"host bridge {nic.bridge!r} is not a bridge network of this node (any more)",
            )
        kind = links.kind(nic.bridge)
        if kind != "bridge":
            found = "does not exist" if kind is None else f"is a {kind}, not a bridge"
            raise error(
                f"{_NETWORKS}[{index}].multus.networkName",
                f"host bridge {nic.bridge!r} {found} on this node",
            )


def precondition(field: str, problem: str) -> Exception:
    return FailedPrecondition(f"{field}: {problem}")


def holding(new: VMAllocation | None, live: VMAllocation | None) -> VMAllocation | None:
    """What a VM holds: its new allocation plus what ``live`` (older) still uses."""
    if new is None or live is None:
        return new or live
    extra = tuple(nic for nic in live.nics if nic not in new.nics)
    return dataclasses.replace(new, nics=new.nics + extra)


def describe(plan: Plumbing) -> str:
    parts = []
    for tap in plan.taps:
        where = f"bridge {tap.bridge}" if tap.bridge else f"{tap.guest_ip} via {tap.gateway}"
        parts.append(f"{tap.name} ({where}, mtu {tap.mtu})")
    return ", ".join(parts) or "no NICs"


def require_allocation(spec: VMSpec, allocation: VMAllocation | None) -> VMAllocation | None:
    if allocation is None and spec.interfaces:
        raise FailedPrecondition(
            f"vm {spec.key} has interfaces but no network allocation; apply it again"
        )
    return allocation


def link_mtus(links: Links, uplink: str, allocation: VMAllocation) -> dict[str, int]:
    """The MTU of the uplink and of each bridge the VM's NICs join."""
    mtus = {}
    uplink_mtu = links.mtu(uplink)
    if uplink_mtu is None:
        raise NetworkError(f"the uplink {uplink!r} does not exist")
    mtus[uplink] = uplink_mtu
    for nic in allocation.nics:
        if nic.binding == BRIDGE:
            mtus[nic.bridge] = links.mtu(nic.bridge) or 0
    return mtus


def forget_connections(conntrack: ConnTracker, addresses: set[str]) -> None:
    for address in sorted(addresses):
        try:
            conntrack.forget(address)
        except Exception as exc:  # never fail a delete over it
            log.warning("forgetting connections of %s: %s", address, exc)


def refuse_conflicts(spec: VMSpec, conflicts: list[str]) -> None:
    if conflicts:
        log.error("refusing to plug %s: %s", spec.key, "; ".join(conflicts))
        raise FailedPrecondition(
            f"vm {spec.key} cannot be plugged: {'; '.join(conflicts)}; its network "
            "allocation collides with another VM's (damaged bookkeeping?)"
        )
