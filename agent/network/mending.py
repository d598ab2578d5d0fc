"""Putting one VM's taps and DHCP back as planned, where a measurement says they are off."""

from __future__ import annotations

from agent.network.dhcp import Lease
from agent.network.drift import tap_drift
from agent.network.plan import Plumbing
from agent.network.ports import DhcpService, Links, NetworkError, TapInfo
from agent.ports import NetworkRepair

__all__ = ["mend", "serve"]


def mend(
    links: Links,
    dhcp: DhcpService,
    domain: str,
    plan: Plumbing,
    found: dict[str, TapInfo],
    *,
    fresh_process: bool = False,
) -> list[NetworkRepair]:
    """Repair what differs from ``plan`` in ``found`` (``Links.taps``); write nothing else.
    (``fresh_process``: DHCP not served yet is the agent's start, not a repair.)"""
    repairs = []
    serving = dhcp.serving()
    leases = dict(plan.leases)
    for tap in plan.taps:
        made = False
        if kinds := tap_drift(tap, found.get(tap.name)):
            made = links.ensure_tap(tap, replace=False)
            if not made and kinds == ("tap",):
                kinds = ("link",)  # it was there, unmarked (its alias removed)
            repairs += [NetworkRepair(kind, domain, tap.name) for kind in kinds]
        if tap.name in leases and (made or tap.name not in serving):
            serve(dhcp, tap.name, leases[tap.name], fresh=made)
            if not made and not fresh_process:
                repairs.append(NetworkRepair("dhcp", domain, tap.name))
    return repairs


def serve(dhcp: DhcpService, tap: str, lease: Lease, *, fresh: bool) -> None:
    """Answer DHCP on ``tap``; ``fresh`` (a new link): a new socket, as the old one is bound
    to the old link's index."""
    if fresh:
        dhcp.stop_serving(tap)
    try:
        dhcp.serve(tap, lease)
    except OSError as exc:  # e.g. another DHCP server holds port 67 for all links
        raise NetworkError(f"answering DHCP on {tap}: {exc}") from exc
