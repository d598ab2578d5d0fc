"""RoutedNetwork: the VMNetwork of a node (masquerade and bridge bindings).

Measure, then act: every method can run again with the same arguments and changes nothing
the second time. The nftables table is a function of the VMs that are plugged: each change is
the difference between the elements before and after, in one transaction; when that fails,
or the table looks wrong (deleted or edited by hand, seen by ``repair``), the whole table is
built again from the plugged VMs, atomically. ``repair`` (the periodic resync) and
``reconcile`` measure taps, routes, neighbours and sysctls in one pass and rewrite only what
is off.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection

from agent.errors import InvalidSpec, Unavailable
from agent.models import InterfaceStatus, NicBacking, VMAllocation, VMSpec
from agent.naming import vm_key
from agent.network import drift, guards, mending, names, ruleset
from agent.network.allocation import allocate_vm, incoming_allocation
from agent.network.firewallunion import FirewallUnion
from agent.network.ipam import Ledger
from agent.network.plan import (
    NetworkConfig,
    Plumbing,
    interface_statuses,
    nic_backings,
    plumbing,
)
from agent.network.ports import ConnTracker, DhcpService, Firewall, Links, NetworkError, TapInfo
from agent.network.ruleset import FirewallState
from agent.ports import NetworkRepair

__all__ = ["RoutedNetwork"]

log = logging.getLogger(__name__)

# A VM allocated or plugged this recently is being created or started: a reconcile working
# from an older list of domains must not take its addresses or plumbing away.
_BUSY_SECONDS = 120.0


class RoutedNetwork:
    """Taps, routes, nftables and DHCP for the VMs of one node.

    Usage::

        network = RoutedNetwork(config, links, firewall, conntrack, dhcp)
        network.start()                      # forwarding on
        network.reconcile(all_domains)       # before the first allocation
        allocation = network.allocate(domain, spec, previous=None)
        network.plug(domain, spec, allocation)    # before the domain starts
        network.unplug(domain, spec, allocation)  # after it is undefined
    """

    def __init__(
        self,
        config: NetworkConfig,
        links: Links,
        firewall: Firewall,
        conntrack: ConnTracker,
        dhcp: DhcpService,
        *,
        clock: Callable[[], float] = time.monotonic,
        ready_timeout: float = 60.0,
    ) -> None:
        self.config = config
        self.links = links
        self.firewall = firewall
        self.conntrack = conntrack
        self.dhcp = dhcp
        self.ledger = Ledger(config.cidr, config.node_ports, pool=config.pool)
        self._bridges = dict(config.bridges)
        self._union = FirewallUnion(
            FirewallState.egress_policy(config.egress_deny, config.egress_allow)
        )
        self._clock = clock
        self._ready_timeout = ready_timeout
        self._lock = threading.RLock()
        self._live: dict[str, tuple[VMAllocation, Plumbing]] = {}
        self._applied: FirewallState | None = None  # None: unknown, rebuild next time
        self._touched: dict[str, float] = {}
        self._plugging: set[str] = set()  # domains whose taps plug() is making right now
        self._cut_off: dict[str, str] = {}  # running VMs whose taps were deleted: why
        self._ready = threading.Event()

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Turn forwarding on (the periodic resync keeps it on: ``repair``)."""
        if self.links.mtu(self.config.uplink) is None:
            raise NetworkError(f"uplink {self.config.uplink!r} does not exist")
        self.links.enable_forwarding()

    def stop(self) -> None:
        """Nothing runs in the background; the plumbing stays (running VMs keep their
        network)."""

    # -- VMNetwork ------------------------------------------------------------------------

    def allocate(
        self, domain: str, spec: VMSpec, previous: VMAllocation | None
    ) -> VMAllocation | None:
        if not self._ready.wait(self._ready_timeout):
            raise Unavailable("the VM network is not reconciled with libvirt yet; retry")
        with self._lock:
            new = None
            if spec.interfaces:
                bridges = guards.allowed_bridges(spec, self._bridges)
                new = allocate_vm(domain, spec, previous, self.ledger, bridges=bridges)
                guards.check_bridges(self.links, spec, new, InvalidSpec, self._bridges)
            # Until ``settle``, the VM also keeps what it held before: a failed define
            # leaves the books with ``previous``, and nobody else may have taken it.
            self._hold(domain, guards.holding(new, previous))
        return new

    def adopt(
        self, domain: str, spec: VMSpec, incoming: VMAllocation | None
    ) -> VMAllocation | None:
        """A VM migrating in keeps its address, MAC and tap (held here even outside this
        node's pool) and its node ports where free here (see ``incoming_allocation``)."""
        self._ready.wait(self._ready_timeout)  # (allocate says so if it is not)
        with self._lock:
            kept = incoming_allocation(incoming, self.ledger, domain) if incoming else None
        return self.allocate(domain, spec, kept)

    def settle(self, domain: str, allocation: VMAllocation | None) -> None:
        """The VM's books now store ``allocation``: release whatever else it reserved."""
        with self._lock:
            self._hold(domain, allocation)

    def _hold(self, domain: str, allocation: VMAllocation | None) -> None:
        live = self._live.get(domain)
        held = guards.holding(allocation, live[0] if live else None)
        if held is None:
            self.ledger.release(domain)
        else:
            self.ledger.claim(domain, held)
        self._touched[domain] = self._clock()

    def nics(
        self, domain: str, spec: VMSpec, allocation: VMAllocation | None
    ) -> tuple[NicBacking, ...]:
        if (allocation := guards.require_allocation(spec, allocation)) is None:
            return ()
        return nic_backings(spec, allocation, self._mtus(allocation), self.config.uplink)

    def plug(self, domain: str, spec: VMSpec, allocation: VMAllocation | None) -> None:
        if (allocation := guards.require_allocation(spec, allocation)) is None:
            return
        guards.check_bridges(self.links, spec, allocation, guards.precondition, self._bridges)
        self._refuse_conflicts(domain, spec, allocation)
        plan = self._plan(domain, spec, allocation)
        created: list[str] = []
        served: list[str] = []
        with self._lock:
            # A reconcile running meanwhile must not take the new taps for leftovers.
            self._plugging.add(domain)
        try:
            for tap in plan.taps:
                if self.links.ensure_tap(tap, replace=True):
                    created.append(tap.name)
            for tap_name, lease in plan.leases:
                if tap_name not in self.dhcp.serving():
                    served.append(tap_name)
                mending.serve(self.dhcp, tap_name, lease, fresh=tap_name in created)
            with self._lock:
                live = dict(self._live)
                old = live.get(domain)
                live[domain] = (allocation, plan)
                self._refuse_conflicts(domain, spec, allocation)
                self._sync_firewall(live)
                self._live = live
                self.ledger.claim(domain, allocation)
                self._touched[domain] = self._clock()
                self._cut_off.pop(domain, None)  # a new QEMU opens the taps
        except Exception:
            for tap_name in served:
                self.dhcp.stop_serving(tap_name)
            for tap_name in created:
                with contextlib.suppress(Exception):
                    self.links.delete_tap(tap_name)
            raise
        finally:
            with self._lock:
                self._plugging.discard(domain)
        if old is not None:  # taps of NICs the new spec no longer has
            self._remove_taps(domain, {t.name for t in old[1].taps} - {t.name for t in plan.taps})
        log.info("plugged %s: %s", spec.key, guards.describe(plan), extra={"vm": spec.key})

    def unplug(self, domain: str, spec: VMSpec, allocation: VMAllocation | None) -> None:
        with self._lock:
            old = self._live.pop(domain, None)
            self.ledger.release(domain)
            self._touched.pop(domain, None)
            self._cut_off.pop(domain, None)
            try:
                self._sync_firewall(self._live)
            except NetworkError as exc:  # the VM is gone already: ``repair`` converges later
                log.error("removing %s from nft failed: %s", spec.key, exc)
        taps = {t.name for t in old[1].taps} if old else set()
        addresses = set(old[1].addresses) if old else set()
        if allocation is not None:
            taps |= {n.tap for n in allocation.nics}
            addresses |= {n.ip for n in allocation.nics if n.ip}
        for name, info in self.links.taps().items():
            owner = names.alias_owner(info.alias)
            if owner is not None and owner[0] == domain:
                taps.add(name)
                addresses |= set(info.routes)
        self._remove_taps(domain, taps)
        guards.forget_connections(self.conntrack, addresses)
        log.info("unplugged %s", spec.key, extra={"vm": spec.key})

    def interfaces(
        self, domain: str, spec: VMSpec, allocation: VMAllocation | None
    ) -> tuple[InterfaceStatus, ...]:
        if allocation is None:
            return tuple(InterfaceStatus(name=i.name) for i in spec.interfaces)
        return interface_statuses(spec, allocation)

    def reconcile(
        self, vms: dict[str, tuple[VMSpec, VMAllocation | None, bool]]
    ) -> tuple[NetworkRepair, ...]:
        """Make the node match the VMs: plumbing for the running ones, none for the rest.

        Taps, routes, neighbours and sysctls of running VMs are measured and put back where
        they are off, the nft table is built again unless it is as it should be; taps the
        agent made for VMs that are gone or stopped are removed, with their conntrack
        entries. Returns what was repaired of running VMs' plumbing.
        """
        repairs: list[NetworkRepair] = []
        with self._lock:
            now = self._clock()
            busy = {d for d, t in self._touched.items() if now - t < _BUSY_SECONDS}
            self._touched = {d: self._touched[d] for d in busy}
            allocations = {d: a for d, (_, a, _) in vms.items() if a is not None}
            claims = self.ledger.claims()
            kept = {d: claims[d] for d in busy if d not in allocations and d in claims}
            for conflict in self.ledger.reset({**allocations, **kept}):
                log.error("network allocations overlap: %s", conflict)
            live = {d: self._live[d] for d in busy if d in self._live}
            found = self.links.taps(measure=True)
            for domain, (spec, _, active) in sorted(vms.items()):
                if active and domain in allocations and domain not in live:
                    plan = self._repair(domain, spec, allocations[domain], found, repairs)
                    if plan is not None:
                        live[domain] = (allocations[domain], plan)
            self._live = live
            self._check_table(report=False)
            stale = self._stale_taps(found)
            self._ready.set()
        for domain, taps, addresses in stale:
            log.info(
                "repaired: network leftovers of %s removed: %s", domain, ", ".join(sorted(taps))
            )
            self._remove_taps(domain, taps)
            guards.forget_connections(self.conntrack, addresses)
        return tuple(repairs)

    # -- the periodic resync ----------------------------------------------------------------

    def repair(self, running: Collection[str]) -> tuple[NetworkRepair, ...]:
        """Put back what changed behind the agent's back: forwarding, the nft table, and the
        taps, routes, neighbours, sysctls and DHCP of the ``running`` VMs that are plugged
        (a VM being plugged or unplugged meanwhile is left to its verb). Measured first, in
        one pass for all taps: nothing is written when all is in place."""
        started = self._clock()
        repairs = []
        if self.links.enable_forwarding():
            repairs.append(NetworkRepair("sysctl", "", "net.ipv4.ip_forward"))
        with self._lock:
            repairs += self._check_table(report=True)
            found = self.links.taps(measure=True)
            for domain in sorted(set(running) & self._live.keys() - self._plugging):
                plan = self._live[domain][1]
                try:
                    repairs += mending.mend(self.links, self.dhcp, domain, plan, found)
                except Exception:
                    log.exception("repairing the network of %s failed", domain)
                if self._touched.get(domain, 0.0) < started:  # (not plugged meanwhile)
                    self._note_cut_off(domain, drift.cut_off(plan.taps, found))
        return tuple(repairs)

    def cut_off(self, domain: str) -> str:
        with self._lock:
            return self._cut_off.get(domain, "")

    def _note_cut_off(self, domain: str, why: str) -> None:
        if why and domain not in self._cut_off:
            log.error("network of running vm %s is cut off: %s", vm_key(domain), why)
        if why:
            self._cut_off[domain] = why
        else:
            self._cut_off.pop(domain, None)

    def _check_table(self, *, report: bool) -> list[NetworkRepair]:
        """Build the table again unless it holds what it should (rules per chain, elements
        per set)."""
        desired = self._desired(self._live)
        table = self.config.table
        listing = self.firewall.list_table(ruleset.FAMILY, table)
        found = ruleset.listing_summary(listing) if listing is not None else None
        if found == ruleset.summary(desired):
            self._applied = desired
            return []
        what = "missing" if listing is None else "changed"
        if report:
            log.warning("nft table %s is %s; building it again", table, what)
        self._applied = None
        self._sync_firewall(self._live)
        return [NetworkRepair("nft_table", "", f"{table} ({what})")] if report else []

    # -- helpers --------------------------------------------------------------------------

    def _sync_firewall(self, live: dict[str, tuple[VMAllocation, Plumbing]]) -> None:
        """Bring nft to the union of ``live``'s elements; rebuild the table when needed."""
        desired = self._desired(live)
        table = self.config.table
        if self._applied is not None:
            commands = ruleset.element_commands(table, self._applied, desired)
            if not commands:
                return
            try:
                self.firewall.apply(commands)
                self._applied = desired
                return
            except NetworkError as exc:
                log.warning("updating nft table %s failed (%s); building it again", table, exc)
        self._applied = None
        self.firewall.apply(ruleset.rebuild_commands(table, desired))
        self._applied = desired

    def _desired(self, live: dict[str, tuple[VMAllocation, Plumbing]]) -> FirewallState:
        return self._union.of({vm: plan.firewall for vm, (_, plan) in live.items()})

    def _repair(
        self,
        domain: str,
        spec: VMSpec,
        allocation: VMAllocation,
        found: dict[str, TapInfo],
        repairs: list[NetworkRepair],
    ) -> Plumbing | None:
        try:
            plan = self._plan(domain, spec, allocation)
            repairs += mending.mend(self.links, self.dhcp, domain, plan, found, fresh_process=True)
        except Exception:
            log.exception("repairing the network of %s failed", domain, extra={"vm": spec.key})
            return None
        return plan

    def _stale_taps(self, found: dict[str, TapInfo]) -> list[tuple[str, set[str], set[str]]]:
        wanted = {t.name for _, plan in self._live.values() for t in plan.taps}
        stale: dict[str, tuple[set[str], set[str]]] = {}
        for name, info in found.items():
            owner = names.alias_owner(info.alias)
            if owner is not None and name not in wanted and owner[0] not in self._plugging:
                taps, addresses = stale.setdefault(owner[0], (set(), set()))
                taps.add(name)
                addresses |= set(info.routes)
        for name in set(self.dhcp.serving()) - wanted:
            self.dhcp.stop_serving(name)
        return [(d, taps, addresses) for d, (taps, addresses) in sorted(stale.items())]

    def _remove_taps(self, domain: str, taps: set[str]) -> None:
        for name in sorted(taps):
            self.dhcp.stop_serving(name)
            self.links.delete_tap(name)

    def _refuse_conflicts(self, domain: str, spec: VMSpec, allocation: VMAllocation) -> None:
        """Two taps must never route one address: a claim another VM holds is not plugged."""
        with self._lock:
            conflicts = self.ledger.conflicts(domain, allocation)
        guards.refuse_conflicts(spec, conflicts)

    def _plan(self, domain: str, spec: VMSpec, allocation: VMAllocation) -> Plumbing:
        return plumbing(domain, spec, allocation, self.config, self._mtus(allocation))

    def _mtus(self, allocation: VMAllocation) -> dict[str, int]:
        return guards.link_mtus(self.links, self.config.uplink, allocation)
