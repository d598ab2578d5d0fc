"""What differs between a tap's plan and the tap as measured: the kinds of repair it needs.

Pure. The resync measures every tap in one pass (``Links.taps``) and rewrites a tap only
when this finds something off, so a node where all is in place sees no write at all.
"""

from __future__ import annotations

from agent.network.plan import TapPlan
from agent.network.ports import TapInfo

__all__ = ["KINDS", "cut_off", "tap_drift"]

# Everything the resync may repair (the ``kind`` label of virt_agent_resync_repairs_total).
KINDS = ("nft_table", "tap", "link", "address", "route", "neighbour", "sysctl", "dhcp")


def tap_drift(plan: TapPlan, found: TapInfo | None) -> tuple[str, ...]:
    """The repair kinds ``found`` needs to match ``plan``; () when it is in place."""
    if found is None:
        return ("tap",)
    kinds = []
    if _link_differs(plan, found):
        kinds.append("link")
    if not found.ipv6_disabled or (plan.gateway and not found.proxy_arp):
        kinds.append("sysctl")
    if plan.gateway:
        if plan.gateway not in found.addresses:
            kinds.append("address")
        if plan.guest_ip not in found.routes:
            kinds.append("route")
        if plan.guest_mac and (plan.guest_ip, plan.guest_mac.lower()) not in found.neighbours:
            kinds.append("neighbour")
    return tuple(kinds)


def _link_differs(plan: TapPlan, found: TapInfo) -> bool:
    return (
        (bool(plan.mtu) and found.mtu != plan.mtu)
        or found.mac != plan.mac.lower()
        or found.alias != plan.alias
        or found.group != plan.group
        or found.bridge != plan.bridge
        or not found.up
    )


def cut_off(taps: tuple[TapPlan, ...], found: dict[str, TapInfo]) -> str:
    """Why a running guest's NICs no longer reach the node ("" when they do).

    A tap without carrier is one no process holds open: QEMU's file descriptor still points
    at a tap that was deleted, and a tap of the same name made since is another device.
    """
    lost = sorted(t.name for t in taps if t.name not in found or not found[t.name].carrier)
    if not lost:
        return ""
    return (
        f"tap {', '.join(lost)} was deleted under the running guest, whose NIC stays cut "
        "off from the node; restart the VM (vmctl restart --hard) to plug it again"
    )
