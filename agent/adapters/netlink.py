"""PyRoute2Links: the node's links through pyroute2 (the only module importing it).

One ``IPRoute`` per operation, opened and closed in the calling thread: pyroute2 keeps
per-thread sockets and event loops, so one shared across gRPC worker threads would leak them
(pyroute2 docs, threading.rst). Per-interface sysctls (proxy ARP, IPv6 off) are written to
``/proc/sys``, which shows the agent's own network namespace.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetlinkError

from agent.network.names import ALIAS_PREFIX
from agent.network.plan import TapPlan
from agent.network.ports import NetworkError, TapInfo

__all__ = ["PyRoute2Links"]


_SCOPE_LINK = 253
_PROTO_STATIC = 4
_MAIN_TABLE = 254
_NUD_PERMANENT = 0x80


@contextlib.contextmanager
def _netlink(action: str) -> Iterator[Any]:
    """An IPRoute for one operation; NetlinkError becomes NetworkError naming ``action``."""
    with _naming(action), IPRoute() as ipr:
        yield ipr


@contextlib.contextmanager
def _naming(action: str) -> Iterator[None]:
    """NetlinkError becomes NetworkError naming ``action``."""
    try:
        yield
    except NetlinkError as exc:
        raise NetworkError(f"{action}: {exc.args[-1] if exc.args else exc}") from exc


class PyRoute2Links:
    """Links of the network namespace the agent runs in."""

    def __init__(self, proc_sys: str = "/proc/sys") -> None:
        self.proc_sys = Path(proc_sys)
        # pyroute2 logs every netlink message at DEBUG: thousands of lines per VM.
        logging.getLogger("pyroute2").setLevel(logging.WARNING)

    # -- taps -----------------------------------------------------------------------------

    def ensure_tap(self, plan: TapPlan, *, replace: bool) -> bool:
        """Create the tap or bring an existing one in line; True if it was created.

        An existing link of that name that is not a tap of the right queue mode is replaced
        when ``replace`` (its VM is not running), else reported. One netlink socket; for a
        new tap, three link requests before the routes: add, get, one set (attributes, up).
        """
        created = False
        with _netlink(f"creating tap {plan.name}") as ipr:
            link = _get(ipr, plan.name)
            if link is not None and not _matches(link, plan):
                if not replace:
                    raise NetworkError(f"link {plan.name} exists but is not a matching tap")
                ipr.link("del", index=link["index"])
                link = None
            if link is None:
                flags = {"no_pi": 1, "vnet_hdr": 1, "multi_queue": int(plan.multi_queue)}
                ipr.link("add", ifname=plan.name, kind="tuntap", mode="tap", ifr=flags)
                link = _get(ipr, plan.name)
                if link is None:
                    raise NetworkError(f"tap {plan.name} did not appear after creation")
                created = True
            with _naming(f"configuring tap {plan.name}"):
                self._configure(ipr, link, plan)
        return created

    def _configure(self, ipr: Any, link: Any, plan: TapPlan) -> None:
        index = link["index"]
        # Sysctls first: the link is up (and the guest's traffic flows) only once proxy
        # ARP is on and IPv6 is off.
        self._sysctl(f"net/ipv6/conf/{plan.name}/disable_ipv6", "1", optional=True)
        if plan.gateway:
            self._sysctl(f"net/ipv4/conf/{plan.name}/proxy_arp", "1")
        changes = _link_changes(ipr, link, plan)
        if link.get("state") != "up":
            changes["state"] = "up"  # the kernel applies the address and MTU before the flags
        if changes:
            ipr.link("set", index=index, **changes)
        if plan.gateway:
            _route_guest(ipr, index, plan)

    def delete_tap(self, name: str) -> None:
        """Delete the link (its routes and addresses go with it); a missing one is fine."""
        with _netlink(f"deleting tap {name}") as ipr:
            index = _index(ipr, name)
            if index is not None:
                _ignoring(errno.ENODEV, ipr.link, "del", index=index)

    def taps(self, *, measure: bool = False) -> dict[str, TapInfo]:
        """The links marked as the agent's (by alias) with their /32 routes; ``measure``: also
        all the resync compares (addresses, neighbours, link attributes, sysctls). One dump
        each, however many taps there are."""
        with _netlink("listing links") as ipr:
            links = list(ipr.link("dump"))
            names = {link["index"]: link.get("ifname") for link in links}
            ours = {
                link["index"]: link
                for link in links
                if (link.get("ifalias") or "").startswith(ALIAS_PREFIX)
            }
            if not ours:
                return {}
            found = _Found(ours)
            for route in ipr.route("dump", family=socket.AF_INET, table=_MAIN_TABLE):
                if route["dst_len"] == 32 and route.get("dst"):
                    found.add("routes", route.get("oif"), route.get("dst"))
            if measure:
                _measure(ipr, found)
        if not measure:
            return {
                str(link.get("ifname")): TapInfo(
                    str(link.get("ifname")),
                    link.get("ifalias") or "",
                    tuple(sorted(found.get("routes", index))),
                )
                for index, link in ours.items()
            }
        return {
            str(link.get("ifname")): self._tap_info(link, names, found) for link in ours.values()
        }

    def _tap_info(self, link: Any, names: dict[int, Any], found: _Found) -> TapInfo:
        name, index = str(link.get("ifname")), link["index"]
        return TapInfo(
            name=name,
            alias=link.get("ifalias") or "",
            routes=tuple(sorted(found.get("routes", index))),
            mtu=int(link.get("mtu") or 0),
            mac=str(link.get("address") or "").lower(),
            group=int(link.get("group") or 0),
            bridge=str(names.get(link.get("master"), "") or ""),
            up=link.get("state") == "up",
            carrier=bool(link.get("carrier")),
            addresses=tuple(sorted(found.get("addresses", index))),
            neighbours=tuple(sorted(found.get("neighbours", index))),
            proxy_arp=self._read(f"net/ipv4/conf/{name}/proxy_arp") == "1",
            ipv6_disabled=self._read(f"net/ipv6/conf/{name}/disable_ipv6") in ("1", None),
        )

    # -- facts ----------------------------------------------------------------------------

    def mtu(self, name: str) -> int | None:
        with _netlink(f"reading link {name}") as ipr:
            link = _get(ipr, name)
        value = link.get("mtu") if link is not None else None
        return int(value) if value else None

    def kind(self, name: str) -> str | None:
        """ "bridge", "tun", "veth", ... ; "device" for links without a kind; None if absent."""
        with _netlink(f"reading link {name}") as ipr:
            link = _get(ipr, name)
        if link is None:
            return None
        kind = link.get(("linkinfo", "kind"))
        return str(kind) if kind else "device"

    def default_route_interface(self) -> str | None:
        """The link of the IPv4 default route with the lowest metric."""
        with _netlink("reading the default route") as ipr:
            best: tuple[int, int] | None = None
            for route in ipr.route("dump", family=socket.AF_INET, table=_MAIN_TABLE):
                if route["dst_len"] == 0 and route.get("oif"):
                    candidate = (route.get("priority") or 0, route.get("oif"))
                    best = candidate if best is None or candidate < best else best
            if best is None:
                return None
            name = ipr.link("get", index=best[1])[0].get("ifname")
            return str(name) if name else None

    def ipv4_address(self, name: str) -> str | None:
        """The first IPv4 address of link ``name`` (None: no such link or no address)."""
        with _netlink(f"reading the addresses of {name}") as ipr:
            index = _index(ipr, name)
            if index is None:
                return None
            for address in ipr.get_addr(family=socket.AF_INET, index=index):
                value = address.get("IFA_ADDRESS") or address.get("address")
                if value:
                    return str(value)
            return None

    def enable_forwarding(self) -> bool:
        return self._sysctl("net/ipv4/ip_forward", "1")

    def _sysctl(self, key: str, value: str, *, optional: bool = False) -> bool:
        """Set ``key`` unless it has ``value`` already; True if it was written."""
        path = self.proc_sys / key
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
                return True
        except FileNotFoundError:
            if not optional:
                raise NetworkError(f"sysctl {key.replace('/', '.')} does not exist") from None
        except OSError as exc:
            raise NetworkError(f"setting sysctl {key.replace('/', '.')}: {exc}") from exc
        return False

    def _read(self, key: str) -> str | None:
        """A sysctl's value; None when it does not exist (a link gone meanwhile, no IPv6)."""
        try:
            return (self.proc_sys / key).read_text().strip()
        except OSError:
            return None


class _Found:
    """Measurements per link index, for the agent's links only."""

    def __init__(self, ours: dict[int, Any]) -> None:
        self._values: dict[tuple[str, int], list[Any]] = {}
        self._ours = ours

    def add(self, what: str, index: Any, value: Any) -> None:
        if index in self._ours and value:
            self._values.setdefault((what, index), []).append(value)

    def get(self, what: str, index: int) -> list[Any]:
        return self._values.get((what, index), [])


def _measure(ipr: Any, found: _Found) -> None:
    """The IPv4 addresses and permanent neighbour entries of the agent's links."""
    for address in ipr.addr("dump", family=socket.AF_INET):
        found.add("addresses", address.get("index"), address.get("address"))
    for entry in ipr.neigh("dump", family=socket.AF_INET):
        if entry["state"] & _NUD_PERMANENT and entry.get("lladdr"):
            pair = (entry.get("dst"), str(entry.get("lladdr")).lower())
            found.add("neighbours", entry["ifindex"], pair)


def _ignoring(code: int, call: Any, *args: Any, **kwargs: Any) -> None:
    """Call; an error ``code`` means the state is already as wanted (EEXIST, ENODEV)."""
    try:
        call(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code != code:
            raise


def _link_changes(ipr: Any, link: Any, plan: TapPlan) -> dict[str, Any]:
    """The link attributes that differ from the plan (measure, then act)."""
    changes: dict[str, Any] = {}
    if plan.mtu and link.get("mtu") != plan.mtu:
        changes["mtu"] = plan.mtu
    if link.get("address") != plan.mac:
        changes["address"] = plan.mac
    if link.get("ifalias") != plan.alias:
        changes["ifalias"] = plan.alias
    if link.get("group") != plan.group:
        changes["group"] = plan.group
    if plan.bridge:
        bridge = _index(ipr, plan.bridge)
        if bridge is None:
            raise NetworkError(f"host bridge {plan.bridge} does not exist")
        if link.get("master") != bridge:
            changes["master"] = bridge
    return changes


def _route_guest(ipr: Any, index: int, plan: TapPlan) -> None:
    """The gateway address on the routed tap, a /32 route to the guest and, with its MAC
    known, a permanent neighbour entry for it."""
    # Added blind, EEXIST ignored: a dump "filtered" by index reads every address of the
    # namespace (one per tap), which made each VM's plug linear in the number of VMs.
    _ignoring(errno.EEXIST, ipr.addr, "add", index=index, address=plan.gateway, prefixlen=32)
    ipr.route(
        "replace", dst=plan.guest_ip, dst_len=32, oif=index, scope=_SCOPE_LINK,
        proto=_PROTO_STATIC, table=_MAIN_TABLE,
    )  # fmt: skip
    if plan.guest_mac:
        # Permanent: a guest forging ARP (another MAC for its address) cannot change where
        # the node sends its traffic; no ARP round trip before the first reply.
        ipr.neigh(
            "replace", dst=plan.guest_ip, lladdr=plan.guest_mac, ifindex=index,
            state=_NUD_PERMANENT,
        )  # fmt: skip


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _get(ipr: Any, name: str) -> Any:
    """The link called ``name`` (one request), or None if there is none."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def _matches(link: Any, plan: TapPlan) -> bool:
    """True if the link is a tap in the queue mode the plan asks for."""
    if link.get(("linkinfo", "kind")) != "tun":
        return False
    data = link.get(("linkinfo", "data"))
    if data is None:
        return False
    is_tap = data.get("IFLA_TUN_TYPE") == 2
    multi_queue = bool(data.get("IFLA_TUN_MULTI_QUEUE"))
    return is_tap and multi_queue == plan.multi_queue
