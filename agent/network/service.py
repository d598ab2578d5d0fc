"""RoutedNetwork: the VMNetwork of a node (masquerade and bridge bindings).

Measure, then act: every method can run again with the same arguments and changes nothing
the second time. The nftables table is a function of the VMs that are plugged: each change is
the difference between the elements before and after, in one transaction; when that fails,
or the table looks wrong (deleted or edited by hand, seen by ``check``), the whole table is
built again from the plugged VMs, atomically.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from agent.errors import FailedPrecondition, InvalidSpec, Unavailable
from agent.models import InterfaceStatus, NicBacking, VMAllocation, VMSpec
from agent.network import guards, names, ruleset
from agent.network.allocation import BRIDGE, allocate_vm, incoming_allocation
from agent.network.dhcp import Lease
from agent.network.ipam import Ledger
from agent.network.plan import (
    NetworkConfig,
    Plumbing,
    interface_statuses,
    nic_backings,
    plumbing,
)
from agent.network.ports import ConnTracker, DhcpService, Firewall, Links, NetworkError
from agent.network.ruleset import FirewallState

__all__ = ["RoutedNetwork"]

log = logging.getLogger(__name__)

# A VM allocated or plugged this recently is being created or started: a reconcile working
# from an older list of domains must not take its addresses or plumbing away.
_BUSY_SECONDS = 120.0


class RoutedNetwork:
    """Taps, routes, nftables and DHCP for the VMs of one node.

    Usage::

        network = RoutedNetwork(config, links, firewall, conntrack, dhcp)
        network.start()                      # forwarding on, the checker thread
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
        check_interval: float = 5.0,
        ready_timeout: float = 60.0,
    ) -> None:
        self.config = config
        self.links = links
        self.firewall = firewall
        self.conntrack = conntrack
        self.dhcp = dhcp
        self.ledger = Ledger(config.cidr, config.node_ports, pool=config.pool)
        self._bridges = dict(config.bridges)
        self._policy = FirewallState.egress_policy(config.egress_deny, config.egress_allow)
        self._clock = clock
        self._check_interval = check_interval
        self._ready_timeout = ready_timeout
        self._lock = threading.RLock()
        self._live: dict[str, tuple[VMAllocation, Plumbing]] = {}
        self._applied: FirewallState | None = None  # None: unknown, rebuild next time
        self._touched: dict[str, float] = {}
        self._plugging: set[str] = set()  # domains whose taps plug() is making right now
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._checker: threading.Thread | None = None

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Turn forwarding on and start checking the table and taps periodically."""
        if self.links.mtu(self.config.uplink) is None:
            raise NetworkError(f"uplink {self.config.uplink!r} does not exist")
        self.links.enable_forwarding()
        if self._checker is None and self._check_interval > 0:
            self._checker = threading.Thread(target=self._check_loop, name="net-check", daemon=True)
            self._checker.start()

    def stop(self) -> None:
        """Stop checking; the plumbing stays (running VMs keep their network)."""
        self._stopping.set()
        if self._checker is not None:
            self._checker.join(timeout=10)
            self._checker = None

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
        if (allocation := self._require(spec, allocation)) is None:
            return ()
        return nic_backings(spec, allocation, self._mtus(spec, allocation), self.config.uplink)

    def plug(self, domain: str, spec: VMSpec, allocation: VMAllocation | None) -> None:
        if (allocation := self._require(spec, allocation)) is None:
            return
        guards.check_bridges(self.links, spec, allocation, guards.precondition, self._bridges)
        self._refuse_conflicts(domain, spec, allocation)
        plan = plumbing(domain, spec, allocation, self.config, self._mtus(spec, allocation))
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
                self._serve(tap_name, lease, fresh=tap_name in created)
            with self._lock:
                live = dict(self._live)
                old = live.get(domain)
                live[domain] = (allocation, plan)
                self._refuse_conflicts(domain, spec, allocation)
                self._sync_firewall(live)
                self._live = live
                self.ledger.claim(domain, allocation)
                self._touched[domain] = self._clock()
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
            try:
                self._sync_firewall(self._live)
            except NetworkError as exc:  # the VM is gone already: ``check`` converges later
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
        self._forget(addresses)
        log.info("unplugged %s", spec.key, extra={"vm": spec.key})

    def interfaces(
        self, domain: str, spec: VMSpec, allocation: VMAllocation | None
    ) -> tuple[InterfaceStatus, ...]:
        if allocation is None:
            return tuple(InterfaceStatus(name=i.name) for i in spec.interfaces)
        return interface_statuses(spec, allocation)

    def reconcile(self, vms: dict[str, tuple[VMSpec, VMAllocation | None, bool]]) -> None:
        """Make the node match the VMs: plumbing for the running ones, none for the rest.

        Missing taps of running VMs are made again and the nft table is built again from
        scratch (so a table deleted by hand comes back); taps the agent made for VMs that
        are gone or stopped are removed, with their conntrack entries.
        """
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
            for domain, (spec, _, active) in sorted(vms.items()):
                if active and domain in allocations and domain not in live:
                    plan = self._repair(domain, spec, allocations[domain])
                    if plan is not None:
                        live[domain] = (allocations[domain], plan)
            self._applied = None
            self._sync_firewall(live)
            self._live = live
            stale = self._stale_taps()
            self._ready.set()
        for domain, taps, addresses in stale:
            log.info(
                "repaired: network leftovers of %s removed: %s", domain, ", ".join(sorted(taps))
            )
            self._remove_taps(domain, taps)
            self._forget(addresses)

    # -- checking -------------------------------------------------------------------------

    def check(self) -> None:
        """Repair what changed behind the agent's back: the nft table and running VMs' taps."""
        with self._lock:
            desired = self._desired(self._live)
            listing = self.firewall.list_table(ruleset.FAMILY, self.config.table)
            found = ruleset.listing_summary(listing) if listing is not None else None
            if found != ruleset.summary(desired):
                what = "is missing" if listing is None else "was changed"
                log.warning("nft table %s %s; building it again", self.config.table, what)
                self._applied = None
                self._sync_firewall(self._live)
            present = self.links.taps()
            for domain, (_, plan) in sorted(self._live.items()):
                leases = dict(plan.leases)
                for tap in plan.taps:
                    if tap.name not in present:
                        # The guest's NIC stays detached until it is plugged again (restart).
                        log.warning("tap %s of %s was deleted; making it again", tap.name, domain)
                        self.links.ensure_tap(tap, replace=False)
                        if tap.name in leases:
                            self._serve(tap.name, leases[tap.name], fresh=True)

    def _check_loop(self) -> None:
        while not self._stopping.wait(self._check_interval):
            if not self._ready.is_set():
                continue
            try:
                self.check()
            except Exception:
                log.exception("checking the VM network failed")

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
        return FirewallState.union(plan.firewall for _, plan in live.values()) | self._policy

    def _repair(self, domain: str, spec: VMSpec, allocation: VMAllocation) -> Plumbing | None:
        try:
            plan = plumbing(domain, spec, allocation, self.config, self._mtus(spec, allocation))
            made = set()
            for tap in plan.taps:
                if self.links.ensure_tap(tap, replace=False):
                    log.warning("tap %s of running %s was missing; made it again", tap.name, domain)
                    made.add(tap.name)
            for tap_name, lease in plan.leases:
                self._serve(tap_name, lease, fresh=tap_name in made)
        except Exception:
            log.exception("repairing the network of %s failed", domain, extra={"vm": spec.key})
            return None
        return plan

    def _stale_taps(self) -> list[tuple[str, set[str], set[str]]]:
        wanted = {t.name for _, plan in self._live.values() for t in plan.taps}
        stale: dict[str, tuple[set[str], set[str]]] = {}
        for name, info in self.links.taps().items():
            owner = names.alias_owner(info.alias)
            if owner is not None and name not in wanted and owner[0] not in self._plugging:
                taps, addresses = stale.setdefault(owner[0], (set(), set()))
                taps.add(name)
                addresses |= set(info.routes)
        for name in set(self.dhcp.serving()) - wanted:
            self.dhcp.stop_serving(name)
        return [(d, taps, addresses) for d, (taps, addresses) in sorted(stale.items())]

    def _serve(self, tap: str, lease: Lease, *, fresh: bool) -> None:
        """Answer DHCP on ``tap``; ``fresh`` (a new link): a new socket, as the old one is
        bound to the old link's index."""
        if fresh:
            self.dhcp.stop_serving(tap)
        try:
            self.dhcp.serve(tap, lease)
        except OSError as exc:  # e.g. another DHCP server holds port 67 for all links
            raise NetworkError(f"answering DHCP on {tap}: {exc}") from exc

    def _remove_taps(self, domain: str, taps: set[str]) -> None:
        for name in sorted(taps):
            self.dhcp.stop_serving(name)
            self.links.delete_tap(name)

    def _forget(self, addresses: set[str]) -> None:
        for address in sorted(addresses):
            try:
                self.conntrack.forget(address)
            except Exception as exc:  # never fail a delete over it
                log.warning("forgetting connections of %s: %s", address, exc)

    def _refuse_conflicts(self, domain: str, spec: VMSpec, allocation: VMAllocation) -> None:
        """Two taps must never route one address: a claim another VM holds is not plugged."""
        with self._lock:
            conflicts = self.ledger.conflicts(domain, allocation)
        if conflicts:
            log.error("refusing to plug %s: %s", spec.key, "; ".join(conflicts))
            raise FailedPrecondition(
                f"vm {spec.key} cannot be plugged: {'; '.join(conflicts)}; its network "
                "allocation collides with another VM's (damaged bookkeeping?)"
            )

    def _require(self, spec: VMSpec, allocation: VMAllocation | None) -> VMAllocation | None:
        if allocation is None and spec.interfaces:
            raise FailedPrecondition(
                f"vm {spec.key} has interfaces but no network allocation; apply it again"
            )
        return allocation

    def _mtus(self, spec: VMSpec, allocation: VMAllocation) -> dict[str, int]:
        mtus = {}
        uplink_mtu = self.links.mtu(self.config.uplink)
        if uplink_mtu is None:
            raise NetworkError(f"the uplink {self.config.uplink!r} does not exist")
        mtus[self.config.uplink] = uplink_mtu
        for nic in allocation.nics:
            if nic.binding == BRIDGE:
                mtus[nic.bridge] = self.links.mtu(nic.bridge) or 0
        return mtus
