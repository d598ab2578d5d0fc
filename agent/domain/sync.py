"""Keeping the node in line with the VMs' specs: the resync, libvirt's events, restarts.

The resync rebuilds the VM cache from libvirt at every start and reconnect, adopts the
domains the agent made, finishes what a killed agent left half-done and repairs the
plumbing of running VMs. Between them, the periodic ``repair_network`` (every
``--resync-interval``) puts back what changed behind the agent's back: routes, neighbours,
sysctls, taps, the nft table. Domain events keep the cache fresh between resyncs and restart
guests whose run strategy asks for it, with a crash-loop backoff.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection

import agent.metrics.agent_metrics as agent_metrics
from agent.domain.files import VMFiles
from agent.domain.metadata import CorruptMetadata, read_metadata
from agent.domain.readiness import Readiness
from agent.domain.recovery import Operation, StartRecovery
from agent.domain.restarts import CrashBackoff, should_restart
from agent.domain.status import ACTIVE_PHASES, NETWORK_BROKEN
from agent.domain.steps import DomainSteps
from agent.domain.vmcache import VMCache
from agent.models import VMAllocation, VMSpec
from agent.naming import vm_key
from agent.ports import Clock, DomainEvent, DomainState, Hypervisor, NetworkRepair, VMNetwork

__all__ = ["NodeSync", "Spawn"]

log = logging.getLogger(__name__)

Spawn = Callable[[str, Callable[[], None]], None]


class NodeSync:
    """The agent's own background work on the node's VMs (one per VMService)."""

    def __init__(
        self,
        hv: Hypervisor,
        steps: DomainSteps,
        files: VMFiles,
        network: VMNetwork,
        cache: VMCache,
        *,
        readiness: Readiness,
        clock: Clock,
        spawn: Spawn,
        operation: Operation,
        busy: Callable[[], Collection[str]],
    ) -> None:
        self.hv = hv
        self.steps = steps
        self.files = files
        self.network = network
        self.cache = cache
        self.readiness = readiness
        self.clock = clock
        self._spawn = spawn
        self._operation = operation
        self._busy = busy  # VMs a verb holds (being made): their files are not orphans
        self._backoff = CrashBackoff()
        self._recovery = StartRecovery(steps, spawn, operation, self._restart_later)

    def forget(self, domain: str) -> None:
        """A deleted VM's crash history goes with it (a new VM of that name starts afresh)."""
        self._backoff.forget(domain)

    def resync(self) -> None:
        """Rebuild the VM cache from libvirt: adopt every domain the agent made, drop the rest."""
        ours: dict[str, tuple[VMSpec, VMAllocation | None, bool]] = {}
        later: list[Callable[[], None]] = []  # finishing or (re)starting VMs
        domains = self.hv.list_domains()
        for info in domains:
            try:
                parsed = read_metadata(info.config_xml)
            except CorruptMetadata:
                log.exception("domain %s has unreadable virt-agent metadata; left alone", info.name)
                continue
            if parsed is None:
                continue  # not ours: never touched
            ours[info.name] = (parsed[0], parsed[1].network, info.state != DomainState.SHUTOFF)
            try:
                # A fresh read: a verb may have changed the domain since the list was taken.
                record = self.steps.refresh(info.name)
            except CorruptMetadata:
                log.exception("domain %s has unreadable live metadata", info.name)
                continue
            if record is not None and (work := self._recovery.plan(info.name, record)):
                later.append(work)
        for stale in self.cache.names() - set(ours):
            # Read again, never dropped on the list's word: a VM made since the list was
            # taken would be DELETED, then ADDED again, to every watcher.
            try:
                self.steps.refresh(stale)
            except CorruptMetadata:
                self.cache.remove(stale)
        busy = set(self._busy()) | self.steps.migrating  # being made, or arriving
        self.files.remove_orphans({i.name for i in domains} | busy)
        # Repair the plumbing of running VMs; remove what belongs to VMs that are gone.
        self._report(self.network.reconcile(ours))
        for work in later:  # (started after the reconcile, which would unplug what they plug)
            work()

    def repair_network(self) -> tuple[NetworkRepair, ...]:
        """The periodic safety net: measure the plumbing of running VMs and the node's, put
        back what is off (one log line and one count per repair); a VM a verb holds (being
        made, started, stopped, deleted) or that is migrating is left to that verb, and so is
        one whose guest does not exist (e.g. Pending, waiting for a claim: stop leaves its
        taps plugged, without a carrier while no QEMU holds them)."""
        busy = set(self._busy()) | self.steps.migrating
        running = {
            domain
            for domain in self.cache.names() - busy
            if (record := self.cache.get(domain))
            and record.status.phase in ACTIVE_PHASES
            and record.status.guest
        }
        repairs = self.network.repair(running)
        self._report(repairs)
        log.debug("resync pass: %d running vms measured, %d repairs", len(running), len(repairs))
        for domain in sorted(running):  # status shows a NIC cut off from the node, or not
            record = self.cache.get(domain)
            shown = record is not None and any(
                c.type == NETWORK_BROKEN for c in record.status.conditions
            )
            if shown != bool(self.network.cut_off(domain)):
                self.steps.refresh(domain)
        return repairs

    def _report(self, repairs: Collection[NetworkRepair]) -> None:
        for repair in repairs:
            owner = f" of vm {vm_key(repair.domain)}" if repair.domain else ""
            log.warning("repaired: %s %s%s", repair.kind, repair.what, owner)
            agent_metrics.resync_repaired(repair.kind)

    def on_connection(self, connected: bool) -> None:
        """libvirt came (back): read every VM again; libvirt went: not ready until then."""
        if not connected:
            self.readiness.disconnected()
            return
        epoch = self.readiness.connected()
        self._spawn("resync", lambda: self._safe_resync(epoch))

    def on_domain_event(self, event: DomainEvent) -> None:
        """Handle a domain's lifecycle event (called on the adapter's dispatcher thread)."""
        try:
            record = self.steps.refresh(event.name)
        except Exception:
            log.exception("refreshing %s after %s/%s", event.name, event.event, event.detail)
            return
        if record is not None and event.event == "stopped" and event.detail != "migrated":
            # (A guest that migrated away runs elsewhere: never start it here again.)
            self._note_stop_later(event.name, stopped_at=self.clock.now())
            if should_restart(record, detail=event.detail):
                delay = self._backoff.next_delay(
                    event.name, started_at=record.books.started_at, now=self.clock.now()
                )
                self._restart_later(event.name, delay=delay)

    def _safe_resync(self, epoch: int) -> None:
        """Resync until it succeeds on this connection, with backoff; then the agent is ready."""
        delay = 1.0
        while self.readiness.is_current(epoch) and self.hv.connected():
            try:
                self.resync()
                self.readiness.synced(epoch)
                return
            except Exception:
                log.exception("resync failed; retrying in %.0fs", delay)
            self.clock.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _note_stop_later(self, domain: str, *, stopped_at: float) -> None:
        """Record when the guest stopped, under the VM's lock (never racing a verb's books)."""

        def run() -> None:
            try:
                with self._operation(domain, "note-stop", wait=120.0):
                    current = self.steps.read(domain)
                    if current is None or current[0].state != DomainState.SHUTOFF:
                        return  # gone, or already started again
                    _, spec, books = current
                    if books.stopped_at < books.started_at:
                        stopped = dataclasses.replace(books, stopped_at=stopped_at)
                        self.steps.save_books(domain, spec, stopped)
                        self.steps.refresh(domain)
            except Exception:
                log.exception("recording the stop of %s failed", domain)

        self._spawn(f"stopped-{domain}", run)

    def check_claims(self) -> None:
        """Start the VMs waiting for claims whose claims are there now (ClaimWatch's tick)."""
        self.steps.claims.check(self._start_waiting)

    def _start_waiting(self, domain: str) -> None:
        with self._operation(domain, "claim-check"):
            current = self.steps.read(domain)
            if current is None:
                self.steps.claims.forget(domain)
                return
            info, _, books = current
            if books.halted or not books.starting or info.state != DomainState.SHUTOFF:
                self.steps.claims.forget(domain)  # stopped, or started meanwhile
                self.steps.refresh(domain)
                return
            try:
                self.steps.start(domain)
            except Exception as exc:
                self.steps.claims.failed(domain, exc)
            finally:
                self.steps.refresh(domain)

    def _restart_later(self, domain: str, *, delay: float) -> None:
        def run() -> None:
            self.clock.sleep(delay)  # crash-loop backoff; 0 for the first restart
            try:
                with self._operation(domain, "restart-on-failure", wait=60.0):
                    current = self.steps.refresh(domain)
                    if current is not None and should_restart(current):
                        strategy = current.spec.run_strategy
                        log.info("restarting %s (runStrategy %s)", domain, strategy)
                        self.steps.start(domain)
                        self.steps.refresh(domain)
            except Exception:
                log.exception("restarting %s failed", domain)

        self._spawn(f"restart-{domain}", run)
