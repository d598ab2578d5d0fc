"""Stateful fakes of the VM network's ports: links, nftables, conntrack and DHCP.

They keep state like the real thing (an nft transaction is all-or-nothing, deleting a
missing element fails, a tap has the attributes it was given) and record what was asked,
so tests assert on outcomes. Errors are injected through attributes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from agent.network.dhcp import Lease
from agent.network.names import ALIAS_PREFIX
from agent.network.plan import TapPlan
from agent.network.ports import NetworkError, TapInfo


@dataclass
class FakeLinks:
    """Links by name: the uplink and bridges as given, taps as ensured."""

    links: dict[str, tuple[str, int]] = field(
        default_factory=lambda: {"eth0": ("device", 1450), "br0": ("bridge", 9000)}
    )
    taps_made: dict[str, TapPlan] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    forwarding: bool = False
    ensure_error: Exception | None = None
    default_route: str | None = "eth0"
    ensured: list[str] = field(default_factory=list)  # every ensure_tap call (writes)
    # Taps changed behind the agent's back: TapInfo fields that differ from the plan
    # (routes=(), neighbours=(), carrier=False, ...); ensure_tap puts the tap back.
    damaged: dict[str, dict[str, Any]] = field(default_factory=dict)

    def ensure_tap(self, plan: TapPlan, *, replace: bool) -> bool:
        if self.ensure_error is not None:
            raise self.ensure_error
        if plan.bridge and self.links.get(plan.bridge, ("", 0))[0] != "bridge":
            raise NetworkError(f"host bridge {plan.bridge} does not exist")
        old = self.taps_made.get(plan.name)
        mismatched = old is not None and old.multi_queue != plan.multi_queue
        if mismatched and not replace:
            raise NetworkError(f"link {plan.name} exists but is not a matching tap")
        self.ensured.append(plan.name)
        self.taps_made[plan.name] = plan
        carrier_lost = "carrier" in self.damaged.get(plan.name, {})
        self.damaged.pop(plan.name, None)
        if carrier_lost or old is None:
            self.damaged[plan.name] = {"carrier": False}  # a new tap no QEMU holds open
        if old is None or mismatched:
            self.created.append(plan.name)
            return True
        return False

    def delete_tap(self, name: str) -> None:
        if self.taps_made.pop(name, None) is not None:
            self.deleted.append(name)

    def taps(self, *, measure: bool = False) -> dict[str, TapInfo]:
        return {
            name: dataclasses.replace(_measured(plan), **self.damaged.get(name, {}))
            for name, plan in self.taps_made.items()
            if plan.alias.startswith(ALIAS_PREFIX)
        }

    def plug_in(self, *names: str) -> None:
        """QEMU opened these taps (carrier on)."""
        for name in names:
            self.damaged.pop(name, None)

    def delete_by_hand(self, name: str) -> None:
        """``ip link del``: the tap, its routes and neighbours are gone."""
        self.taps_made.pop(name)
        self.damaged[name] = {"carrier": False}

    def mtu(self, name: str) -> int | None:
        if name in self.taps_made:
            return self.taps_made[name].mtu
        return self.links[name][1] if name in self.links else None

    def kind(self, name: str) -> str | None:
        if name in self.taps_made:
            return "tun"
        return self.links[name][0] if name in self.links else None

    def default_route_interface(self) -> str | None:
        return self.default_route

    def enable_forwarding(self) -> bool:
        was, self.forwarding = self.forwarding, True
        return not was


def _measured(plan: TapPlan) -> TapInfo:
    """The tap as the kernel would show it when everything in the plan is in place."""
    routed = bool(plan.gateway)
    return TapInfo(
        plan.name,
        plan.alias,
        routes=(plan.guest_ip,) if routed else (),
        mtu=plan.mtu,
        mac=plan.mac,
        group=plan.group,
        bridge=plan.bridge,
        addresses=(plan.gateway,) if routed else (),
        neighbours=((plan.guest_ip, plan.guest_mac),) if routed and plan.guest_mac else (),
        proxy_arp=routed,
    )


@dataclass
class _Table:
    chains: dict[str, int] = field(default_factory=dict)  # chain -> rules
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {kind, elems}


class FakeFirewall:
    """nftables tables in memory; ``apply`` is one all-or-nothing transaction."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], _Table] = {}
        self.transactions: list[list[dict[str, Any]]] = []
        self.fail_next: int = 0  # make the next N transactions fail

    def apply(self, commands: list[dict[str, Any]]) -> None:
        self.transactions.append(commands)
        if self.fail_next:
            self.fail_next -= 1
            raise NetworkError("nft transaction failed: injected")
        saved = copy.deepcopy(self.tables)
        try:
            for command in commands:
                self._one(command)
        except KeyError as exc:
            self.tables = saved
            raise NetworkError(f"nft transaction failed: No such file or directory {exc}") from None

    def _one(self, command: dict[str, Any]) -> None:
        ((verb, body),) = command.items()
        ((kind, spec),) = body.items()
        if kind == "table":
            key = (spec["family"], spec["name"])
            if verb == "add":
                self.tables.setdefault(key, _Table())
            else:
                del self.tables[key]
            return
        table = self.tables[(spec["family"], spec["table"])]
        if kind == "chain" and verb == "add":
            table.chains.setdefault(spec["name"], 0)
        elif kind == "rule" and verb == "add":
            table.chains[spec["chain"]] += 1
        elif kind in ("set", "map") and verb == "add":
            table.sets.setdefault(spec["name"], {"kind": kind, "elems": []})
        elif kind == "element":
            elems = table.sets[spec["name"]]["elems"]
            for elem in spec["elem"]:
                text = json.dumps(elem, sort_keys=True)
                if verb == "add":
                    if text not in elems:
                        elems.append(text)
                elif text in elems:
                    elems.remove(text)
                else:
                    raise KeyError(text)
        else:
            raise AssertionError(f"unexpected nft command {command}")

    def list_table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        table = self.tables.get((family, name))
        if table is None:
            return None
        listing: list[dict[str, Any]] = [{"table": {"family": family, "name": name}}]
        for set_name, data in table.sets.items():
            item = {"name": set_name, "elem": [json.loads(e) for e in data["elems"]]}
            if not item["elem"]:
                del item["elem"]
            listing.append({data["kind"]: item})
        for chain, rules in table.chains.items():
            listing.append({"chain": {"name": chain}})
            listing += [{"rule": {"chain": chain}} for _ in range(rules)]
        return listing

    def elements(self, family: str, name: str, set_name: str) -> list[Any]:
        return [json.loads(e) for e in self.tables[(family, name)].sets[set_name]["elems"]]

    def rule_count(self, family: str, name: str) -> int:
        return sum(self.tables[(family, name)].chains.values())


@dataclass
class FakeConntrack:
    forgotten: list[str] = field(default_factory=list)
    error: Exception | None = None

    def forget(self, address: str) -> int:
        if self.error is not None:
            raise self.error
        self.forgotten.append(address)
        return 1


@dataclass
class FakeDhcp:
    leases: dict[str, Lease] = field(default_factory=dict)
    opened: list[str] = field(default_factory=list)  # taps a socket was opened for

    def serve(self, tap: str, lease: Lease) -> None:
        if tap not in self.leases:
            self.opened.append(tap)
        self.leases[tap] = lease

    def stop_serving(self, tap: str) -> None:
        self.leases.pop(tap, None)

    def serving(self) -> dict[str, Lease]:
        return dict(self.leases)
