"""The agent's nftables table as data: a fixed set of rules, and per-VM sets and maps.

Everything is built as libnftables JSON (``nft -j -f -``) from typed values, never by
formatting user input into rule text. The table ``inet virt_agent`` is the only one the
agent touches. Its rules never change; a VM only adds elements:

    taps            ifname                                  the routed (masquerade) taps
    guest_sources   ifname . ipv4_addr . ether_addr         what each tap may send as
    same_namespace  devgroup . devgroup                     (g . g) per namespace group
    fwd_addr        inet_proto . inet_service : ipv4_addr     node port -> guest address
    fwd_port        inet_proto . inet_service : inet_service  node port -> guest port
    published       ipv4_addr . inet_proto . inet_service   guest address, port published
    egress_deny     ipv4_addr (intervals)                   where guests may not go:
                                                            link-local (cloud metadata)
                                                            and the operator's list
    egress_allow    ipv4_addr (intervals)                   exceptions to egress_deny

so the number of rules is the same with 1 VM and with 1,000. The rules (chain: what):

    guard (prerouting, raw)   from a tap: IPv6 dropped; DHCP from 0.0.0.0 passes; the
                              source (tap, IP, MAC) must be the tap's guest, else drop.
                              Before conntrack, so spoofed packets leave no entry.
    input (filter)            from a tap to the node itself: replies, DHCP and ping only.
    forward (filter)          replies pass; from a tap to egress_deny and not egress_allow:
                              counted drop; connections DNAT-ed to one of the agent's own
                              published (guest address, port) pairs pass; tap to
                              tap only within one namespace (the taps' interface groups,
                              one per namespace, must form a (g . g) pair); nothing else
                              reaches a tap.
    nat_prerouting/output     to a node address (not loopback) on a published port: DNAT
                              to the guest; output too, so clients on the node work.
    nat_postrouting           from a tap out of any other link: masquerade (egress);
                              from a tap and DNAT-ed: masquerade (hairpin: a guest using a
                              published port, even its own, gets the replies back).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FAMILY",
    "FirewallState",
    "Forward",
    "chain_rule_counts",
    "element_commands",
    "listing_summary",
    "rebuild_commands",
    "summary",
]

FAMILY = "inet"
Json = dict[str, Any]

_L4_KEY: Json = {
    "concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]
}
# Link-local: the cloud's metadata service (169.254.169.254) and its kin; never a guest's.
EGRESS_ALWAYS_DENIED = ("169.254.0.0/16",)
_INTERVALS = ("egress_deny", "egress_allow")  # sets of address ranges
_SETS: tuple[tuple[str, str | list[str], str | None], ...] = (
    ("taps", "ifname", None),
    ("egress_deny", "ipv4_addr", None),
    ("egress_allow", "ipv4_addr", None),
    ("guest_sources", ["ifname", "ipv4_addr", "ether_addr"], None),
    ("same_namespace", ["devgroup", "devgroup"], None),
    ("fwd_addr", ["inet_proto", "inet_service"], "ipv4_addr"),
    ("fwd_port", ["inet_proto", "inet_service"], "inet_service"),
    ("published", ["ipv4_addr", "inet_proto", "inet_service"], None),
)


@dataclass(frozen=True, slots=True, order=True)
class Forward:
    """One published port: ``protocol node_port`` on the node → ``ip:port`` in a guest."""

    protocol: str  # "tcp" or "udp"
    node_port: int
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class FirewallState:
    """The elements of the agent's sets and maps (for one VM, or the union of all)."""

    taps: frozenset[str] = frozenset()
    sources: frozenset[tuple[str, str, str]] = frozenset()  # (tap, ip, mac)
    groups: frozenset[int] = frozenset()
    forwards: frozenset[Forward] = frozenset()
    egress_deny: frozenset[str] = frozenset()  # CIDRs (the node's policy, not a VM's)
    egress_allow: frozenset[str] = frozenset()

    def __or__(self, other: FirewallState) -> FirewallState:
        return FirewallState(
            self.taps | other.taps,
            self.sources | other.sources,
            self.groups | other.groups,
            self.forwards | other.forwards,
            self.egress_deny | other.egress_deny,
            self.egress_allow | other.egress_allow,
        )

    @staticmethod
    def egress_policy(deny: Iterable[str], allow: Iterable[str]) -> FirewallState:
        """The node's egress policy: link-local always denied, plus the operator's lists."""
        return FirewallState(
            egress_deny=frozenset(EGRESS_ALWAYS_DENIED) | frozenset(deny),
            egress_allow=frozenset(allow),
        )

    @staticmethod
    def union(states: Iterable[FirewallState]) -> FirewallState:
        # One C-level union per field: ``a | b | ...`` would copy the growing sets each time
        # (quadratic in the number of VMs, on every VM's network change).
        parts = [state._parts() for state in states]
        empty: frozenset[Any] = frozenset()
        return FirewallState(*(empty.union(*column) for column in zip(*parts, strict=True)))

    def _parts(self) -> tuple[frozenset[Any], ...]:
        return (self.taps, self.sources, self.groups, self.forwards, self.egress_deny,
                self.egress_allow)  # fmt: skip

    def minus(self, other: FirewallState) -> FirewallState:
        """What ``self`` has and ``other`` has not, field by field."""
        return FirewallState(*(a - b for a, b in zip(self._parts(), other._parts(), strict=True)))

    def published(self) -> frozenset[tuple[str, str, int]]:
        return frozenset((f.ip, f.protocol, f.port) for f in self.forwards)

    def elements(self) -> dict[str, list[Any]]:
        """Set/map name → JSON elements, each list sorted so that output is stable."""
        forwards = sorted(self.forwards)
        return {
            "taps": sorted(self.taps),
            "guest_sources": [{"concat": list(s)} for s in sorted(self.sources)],
            "same_namespace": [{"concat": [g, g]} for g in sorted(self.groups)],
            "fwd_addr": [[{"concat": [f.protocol, f.node_port]}, f.ip] for f in forwards],
            "fwd_port": [[{"concat": [f.protocol, f.node_port]}, f.port] for f in forwards],
            "published": [{"concat": list(p)} for p in sorted(self.published())],
            "egress_deny": _prefixes(self.egress_deny),
            "egress_allow": _prefixes(self.egress_allow),
        }


def _prefixes(cidrs: Iterable[str]) -> list[Json]:
    """Merged ranges (an interval set refuses overlapping elements), as nft prefixes."""
    networks = ipaddress.collapse_addresses(ipaddress.IPv4Network(c) for c in cidrs)
    return [
        {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}} for n in sorted(networks)
    ]


# -- whole-table transactions ---------------------------------------------------------------


def rebuild_commands(table: str, state: FirewallState) -> list[Json]:
    """One transaction that (re)creates the table from scratch with ``state``'s elements.

    ``add table`` + ``delete table`` first: the delete then never fails, whether or not the
    table existed, and the whole swap is atomic (no moment without the rules).
    """
    ref = {"family": FAMILY, "name": table}
    commands: list[Json] = [{"add": {"table": ref}}, {"delete": {"table": ref}}]
    commands.append({"add": {"table": ref}})
    for name, key_type, data_type in _SETS:
        kind = "map" if data_type else "set"
        body: Json = {"family": FAMILY, "table": table, "name": name, "type": key_type}
        if data_type:
            body["map"] = data_type
        if name in _INTERVALS:
            body["flags"] = ["interval"]
        commands.append({"add": {kind: body}})
    for chain, hook in _CHAINS:
        body = {"family": FAMILY, "table": table, "name": chain}
        if hook is not None:
            body.update(hook)
        commands.append({"add": {"chain": body}})
    for chain, expr in _rules():
        commands.append(
            {"add": {"rule": {"family": FAMILY, "table": table, "chain": chain, "expr": expr}}}
        )
    commands += element_commands(table, FirewallState(), state)
    return commands


def element_commands(table: str, old: FirewallState, new: FirewallState) -> list[Json]:
    """Delete what ``old`` has and ``new`` has not, then add what is new; one transaction.

    A map element whose value changed is deleted and added again.
    """
    # Differences of the (hashable) fields first, then only those are rendered: comparing
    # rendered lists was quadratic in the number of VMs. ``published`` is derived from the
    # forwards (two forwards may share an entry) and the egress ranges are merged on
    # rendering, so those few are compared as rendered.
    dropped, added_state = old.minus(new), new.minus(old)
    before, after = dropped.elements(), added_state.elements()
    for side, diff, kept in ((before, dropped, new), (after, added_state, old)):
        touched = diff.published()
        if touched:  # still published through another forward: not an element change
            addresses = {p[0] for p in touched}
            touched -= {(f.ip, f.protocol, f.port) for f in kept.forwards if f.ip in addresses}
        side["published"] = [{"concat": list(p)} for p in sorted(touched)]
    for name, was, now in (
        ("egress_deny", old.egress_deny, new.egress_deny),
        ("egress_allow", old.egress_allow, new.egress_allow),
    ):
        was_list, now_list = _prefixes(was), _prefixes(now)
        before[name] = [e for e in was_list if e not in now_list]
        after[name] = [e for e in now_list if e not in was_list]
    deletes: list[Json] = []
    adds: list[Json] = []
    for name, _, _ in _SETS:
        gone, added = before[name], after[name]
        ref = {"family": FAMILY, "table": table, "name": name}
        if gone:
            deletes.append({"delete": {"element": {**ref, "elem": gone}}})
        if added:
            adds.append({"add": {"element": {**ref, "elem": added}}})
    return deletes + adds


# -- checking a listing ----------------------------------------------------------------------


def summary(state: FirewallState) -> dict[str, int]:
    """What a healthy table looks like, in counts: rules per chain, elements per set."""
    counts = dict(chain_rule_counts())
    counts.update({f"set:{name}": len(elements) for name, elements in state.elements().items()})
    return counts


def listing_summary(listing: list[Json]) -> dict[str, int]:
    """The same counts read from ``nft -j list table`` output."""
    counts: dict[str, int] = {}
    for item in listing:
        if "chain" in item:
            counts.setdefault(item["chain"]["name"], 0)
        elif "rule" in item:
            chain = item["rule"]["chain"]
            counts[chain] = counts.get(chain, 0) + 1
        for kind in ("set", "map"):
            if kind in item:
                counts[f"set:{item[kind]['name']}"] = len(item[kind].get("elem", []))
    return counts


def chain_rule_counts() -> dict[str, int]:
    counts = {chain: 0 for chain, _ in _CHAINS}
    for chain, _ in _rules():
        counts[chain] += 1
    return counts


# -- the fixed part --------------------------------------------------------------------------


def _hook(kind: str, hook: str, priority: int) -> Json:
    return {"type": kind, "hook": hook, "prio": priority, "policy": "accept"}


_CHAINS: tuple[tuple[str, Json | None], ...] = (
    ("guard", _hook("filter", "prerouting", -300)),  # raw: before conntrack
    ("from_guest", None),
    ("input", _hook("filter", "input", 0)),
    ("guest_input", None),
    ("forward", _hook("filter", "forward", 0)),
    ("egress", None),
    ("nat_prerouting", _hook("nat", "prerouting", -100)),
    ("nat_output", _hook("nat", "output", -100)),
    ("nat_postrouting", _hook("nat", "postrouting", 100)),
)


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def _ct(key: str) -> Json:
    return {"ct": {"key": key}}


_FROM_TAP = _match(_meta("iifname"), "@taps")
_TO_TAP = _match(_meta("oifname"), "@taps")
_COUNTED_DROP: list[Json] = [{"counter": None}, {"drop": None}]
_published = _match(
    {"concat": [_payload("ip", "daddr"), _meta("l4proto"), _payload("th", "dport")]},
    "@published",
)


def _dnat_published() -> list[Json]:
    return [
        _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
        # loopback would need route_localnet and an SNAT; node clients use a node address
        _match(_payload("ip", "daddr"), {"prefix": {"addr": "127.0.0.0", "len": 8}}, "!="),
        {
            "dnat": {
                "family": "ip",
                "addr": {"map": {"key": _L4_KEY, "data": "@fwd_addr"}},
                "port": {"map": {"key": _L4_KEY, "data": "@fwd_port"}},
            }
        },
    ]


def _rules() -> list[tuple[str, list[Json]]]:
    source = {"concat": [_meta("iifname"), _payload("ip", "saddr"), _payload("ether", "saddr")]}
    groups = {"concat": [_meta("iifgroup"), _meta("oifgroup")]}
    established = _match(_ct("state"), ["established", "related"], "in")
    return [
        ("guard", [_FROM_TAP, {"jump": {"target": "from_guest"}}]),
        ("from_guest", [_match(_meta("nfproto"), "ipv6"), *_COUNTED_DROP]),
        (
            "from_guest",
            [
                _match(_payload("ip", "saddr"), "0.0.0.0"),
                _match(_payload("udp", "sport"), 68),
                _match(_payload("udp", "dport"), 67),
                {"return": None},
            ],
        ),
        ("from_guest", [_match(source, "@guest_sources"), {"return": None}]),
        ("from_guest", list(_COUNTED_DROP)),
        ("input", [_FROM_TAP, {"jump": {"target": "guest_input"}}]),
        ("guest_input", [established, {"accept": None}]),
        ("guest_input", [_match(_payload("udp", "dport"), 67), {"accept": None}]),
        ("guest_input", [_match(_payload("icmp", "type"), "echo-request"), {"accept": None}]),
        ("guest_input", list(_COUNTED_DROP)),
        ("forward", [established, {"accept": None}]),
        ("forward", [_FROM_TAP, {"jump": {"target": "egress"}}]),
        ("egress", [_match(_payload("ip", "daddr"), "@egress_allow"), {"return": None}]),
        ("egress", [_match(_payload("ip", "daddr"), "@egress_deny"), *_COUNTED_DROP]),
        # DNAT-ed by the agent: to a guest address and port it published (a DNAT made by
        # other software to a tap does not pass).
        ("forward", [_TO_TAP, _match(_ct("status"), "dnat", "in"), _published, {"accept": None}]),
        ("forward", [_FROM_TAP, _TO_TAP, _match(groups, "@same_namespace"), {"accept": None}]),
        ("forward", [_TO_TAP, *_COUNTED_DROP]),
        ("nat_prerouting", _dnat_published()),
        ("nat_output", _dnat_published()),
        (
            "nat_postrouting",
            [_FROM_TAP, _match(_meta("oifname"), "@taps", "!="), {"masquerade": None}],
        ),
        ("nat_postrouting", [_FROM_TAP, _match(_ct("status"), "dnat", "in"), {"masquerade": None}]),
    ]
