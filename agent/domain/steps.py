"""DomainSteps: the measure-then-act building blocks of the VM verbs (read, define, start, stop).

Each step reads libvirt first and acts only when needed, so any of them can be repeated.
``refresh`` is the single place a VM's status is derived and published to the VM cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType

from agent.disks.claimdisks import claim_uses
from agent.disks.configfiles import reads_node_objects
from agent.domain.capabilities import ASSUMED_SUPPORT, NodeSupport, require_node_support
from agent.domain.claimgate import ClaimGate, waiting_status
from agent.domain.files import VMFiles
from agent.domain.metadata import (
    CorruptMetadata,
    metadata_element,
    metadata_payload,
    read_metadata,
)
from agent.domain.plan import HostPlan
from agent.domain.status import ACTIVE_PHASES, derive_status, with_network_broken
from agent.domain.vmcache import VMCache, VMRecord
from agent.domain.xml import domain_xml
from agent.errors import AlreadyExists, Cancelled, FailedPrecondition, NotFound
from agent.models import Bookkeeping, Condition, Phase, RunStrategy, VMSpec, VMStatus
from agent.naming import vm_key
from agent.ports import Clock, DomainInfo, DomainState, Hypervisor, VMNetwork

__all__ = ["Current", "DomainSteps", "never"]

log = logging.getLogger(__name__)

_SHUTDOWN_RESEND_SECONDS = 5.0  # a booting guest can miss an ACPI event (KubeVirt, Nova)
_DESTROY_WAIT_SECONDS = 30.0
_NONE: Mapping[str, str] = MappingProxyType({})

Current = tuple[DomainInfo, VMSpec, Bookkeeping]


def never() -> bool:
    """Not cancelled: the default of ``cancelled``."""
    return False


def _needs_restart(running: VMSpec, stored: VMSpec) -> bool:
    """Whether the guest runs hardware other than the stored spec describes.

    Labels, the run strategy and the grace period apply at once; everything else (CPU,
    memory, disks, NICs, firmware...) only when the guest is started again.
    """

    def hardware(spec: VMSpec) -> VMSpec:
        return dataclasses.replace(
            spec, labels={}, run_strategy=RunStrategy.ALWAYS, termination_grace_period_seconds=0
        )

    return hardware(running) != hardware(stored)


class DomainSteps:
    """Idempotent steps on one domain each; callers hold the VM's operation lock."""

    def __init__(
        self,
        hv: Hypervisor,
        files: VMFiles,
        network: VMNetwork,
        cache: VMCache,
        *,
        node_name: str,
        virt_type: str,
        clock: Clock,
        support: NodeSupport = ASSUMED_SUPPORT,
    ) -> None:
        self.hv = hv
        self.files = files
        self.network = network
        self.cache = cache
        self.node_name = node_name
        self.virt_type = virt_type
        self.support = support
        # Whether a VM with a readiness probe passed it (set by the probe runner).
        self.probe_ready: Callable[[str], bool] = lambda domain: False
        self.clock = clock
        self._starting: set[str] = set()
        # Domains leaving or arriving by live migration: their phase is Migrating.
        self.migrating: set[str] = set()
        self._preempted: set[str] = set()  # graceful stops to cut short (a forced one waits)
        self._refresh_lock = threading.Lock()
        self.claims = ClaimGate(hv, files)  # VMs waiting for claims; claims in use

    # -- reading ------------------------------------------------------------------------

    def read(self, domain: str) -> Current | None:
        """The domain with its spec and books; None when it does not exist."""
        info = self.hv.lookup(domain)
        if info is None:
            return None
        try:
            parsed = read_metadata(info.config_xml)
        except CorruptMetadata as exc:
            raise FailedPrecondition(
                f"domain {domain}: unreadable virt-agent metadata: {exc}"
            ) from exc
        if parsed is None:
            raise AlreadyExists(f"domain {domain} exists and is not managed by virt-agent")
        return info, parsed[0], parsed[1]

    def require(self, domain: str) -> Current:
        current = self.read(domain)
        if current is None:
            raise NotFound(f"vm {vm_key(domain)} not found")
        return current

    def record(self, domain: str) -> VMRecord:
        """The registry's record of the VM (no libvirt call)."""
        record = self.cache.get(domain)
        if record is None:
            raise NotFound(f"vm {vm_key(domain)} not found")
        return record

    def refresh(self, domain: str, info: DomainInfo | None = None) -> VMRecord | None:
        """Read one domain (or use ``info`` just read) into the VM cache; return its record."""
        # One refresh at a time: a slow read finishing after a newer one would store the past.
        with self._refresh_lock:
            if info is None:
                info = self.hv.lookup(domain)
            parsed = read_metadata(info.config_xml) if info else None
            if info is None or parsed is None:
                self.cache.remove(domain)
                return None
            spec, books = parsed
            live = read_metadata(info.live_xml) if info.live_xml else None
            status = derive_status(
                info,
                generation=books.generation,
                running_generation=live[1].generation if live else 0,
                spec_pending=live is not None and _needs_restart(live[0], spec),
                node_name=self.node_name,
                started_at=books.started_at,
                stopped_at=books.stopped_at,
                never_started=not books.started_at,
                starting=domain in self._starting or _start_pending(books, info.state),
            )
            interfaces = self.network.interfaces(domain, spec, books.network)
            status = dataclasses.replace(status, interfaces=interfaces)
            # Only a guest's taps can be cut off (a shut-off domain's have no carrier).
            if status.guest and (cut_off := self.network.cut_off(domain)):
                status = with_network_broken(status, cut_off)
            if spec.readiness_probe is not None and status.phase == Phase.RUNNING:
                status = _gate_ready(status, self.probe_ready(domain))
            waiting = self.claims.waiting.get(domain)
            if waiting is not None and info.state == DomainState.SHUTOFF:
                status = waiting_status(status, waiting)
            if domain in self.migrating and status.phase in ACTIVE_PHASES:
                status = dataclasses.replace(status, phase=Phase.MIGRATING)
            record = VMRecord(spec=spec, books=books, status=status)
            self.cache.put(domain, record)
            return record

    def refreshed(self, domain: str) -> VMRecord:
        return self.refresh(domain) or self.record(domain)

    # -- acting -------------------------------------------------------------------------

    def define(self, domain: str, spec: VMSpec, books: Bookkeeping, *, new: bool) -> None:
        """Resolve the VM's files and (re)define its domain; a new VM's files go on failure."""
        require_node_support(spec, self.virt_type, self.support)
        if new and self.files.vm_exists(domain):
            # Left by a VM of that name whose delete was cut short: never handed on.
            log.warning("removing leftover files of %s before creating it", domain)
            self.files.remove(domain)
        try:
            self.hv.define(self.definition(domain, spec, books))
        except Exception:
            if new:  # nothing half-made: the delete-with-vm claims it imported go too
                self._remove_files(domain, spec)
            raise

    def definition(
        self, domain: str, spec: VMSpec, books: Bookkeeping, *, pins: Mapping[str, str] = _NONE
    ) -> str:
        """The domain XML of the VM on this node; creates its missing files (idempotent).
        ``pins``: containerDisk volume → the manifest digest to use (a migration's source's)."""
        prepared = self.files.prepare(spec, domain, pins=pins)
        plan = HostPlan(
            domain_name=domain,
            uuid=spec.uid,
            virt_type=self.virt_type,
            kernel=prepared.kernel,
            initrd=prepared.initrd,
            console_log=prepared.console_log,
            ignition=prepared.ignition,
            disks=prepared.disks,
            nics=self.network.nics(domain, spec, books.network),
            metadata=metadata_element(spec, books),
        )
        return domain_xml(spec, plan)

    def start(self, domain: str, *, marked: bool = False) -> None:
        """Boot the domain paused, plumb it, then let it run; undo on failure. ``marked``:
        the definition holds the start mark already (a VM created to run stores it with its
        first define), which saves a round trip to libvirt on the start's critical path."""
        info, spec, books = self.require(domain)
        if info.state != DomainState.SHUTOFF:
            return  # running or paused: started already (resume is its own verb)
        if self.claims.missing(domain, spec):
            # Pending until its claims appear (claimgate.py); the mark survives a restart.
            if not books.starting or books.halted:
                waiting = dataclasses.replace(books, starting=True, halted=False)
                self.save_books(domain, spec, waiting)
            return
        with self.claims.starting(domain, spec):
            if claim_uses(spec) or reads_node_objects(spec):
                # What the claims are now (a file or a device, raw or qcow2), and the node
                # objects (secrets, config maps, SSH keys) as they are now.
                self.hv.define(self.definition(domain, spec, books))
            self._boot(domain, spec, books, marked=marked and books.starting)

    def _boot(self, domain: str, spec: VMSpec, books: Bookkeeping, *, marked: bool) -> None:
        # ``starting`` is stored first: an agent killed before the resume leaves a paused
        # guest that only this mark tells apart from one a user paused (see recovery.py).
        if not marked:
            now = self.clock.now()
            books = dataclasses.replace(books, started_at=now, halted=False, starting=True)
            self.save_books(domain, spec, books)
        self._starting.add(domain)
        try:
            # Taps must exist before QEMU opens them (managed='no'); NAT and DHCP are ready
            # before the guest runs, so its first DHCP request is answered.
            self.network.plug(domain, spec, books.network)
            self.hv.start(domain, paused=True)
            try:
                # Stored before the guest runs its first instruction: a guest found off
                # with this mark ran (and crashed or stopped), and is never booted again
                # by recovery, only by its run strategy.
                books = dataclasses.replace(books, resumed=True)
                self.save_books(domain, spec, books)
                self.hv.resume(domain)
            except Exception:
                with contextlib.suppress(Exception):
                    self.hv.destroy(domain)
                raise
        except Exception:
            with contextlib.suppress(Exception):  # failed, not interrupted: nothing to finish
                done = dataclasses.replace(books, starting=False, resumed=False)
                self.save_books(domain, spec, done)
            raise
        finally:
            self._starting.discard(domain)
        done = dataclasses.replace(books, starting=False, resumed=False)
        self.save_books(domain, spec, done, live=True)

    def preempt(self, domain: str, on: bool = True) -> None:
        """Cut a graceful stop of ``domain`` in flight short: it destroys the guest now."""
        if on:
            self._preempted.add(domain)
            self.cache.poke()
        else:
            self._preempted.discard(domain)

    def stop(
        self, domain: str, grace: int, *, force: bool, cancelled: Callable[[], bool] = never
    ) -> None:
        """ACPI shutdown re-sent every few seconds, destroy when the grace period runs out
        (or at once when preempted); Cancelled when ``cancelled()`` turns true meanwhile.

        The VM is marked halted first, so its run strategy does not start it again.
        """
        info, spec, books = self.require(domain)
        self.claims.forget(domain)
        if not books.halted or books.starting:
            stopped = dataclasses.replace(books, halted=True, starting=False, resumed=False)
            self.save_books(domain, spec, stopped)
        if info.state == DomainState.SHUTOFF:
            return
        if force or grace <= 0:
            self.destroy(domain)
            return
        deadline = self.clock.monotonic() + grace
        while self.clock.monotonic() < deadline and domain not in self._preempted:
            if cancelled():
                raise Cancelled(f"stopping vm {vm_key(domain)}: the call was cancelled")
            if info.state == DomainState.PAUSED:
                # A paused guest cannot react to the power button. (A guest suspended to RAM
                # cannot be resumed this way: it gets the button, then the destroy.)
                with contextlib.suppress(FailedPrecondition):
                    self.hv.resume(domain)
            with contextlib.suppress(FailedPrecondition):
                self.hv.shutdown(domain)
            wait = min(_SHUTDOWN_RESEND_SECONDS, max(0.0, deadline - self.clock.monotonic()))
            if self.wait_for_shutoff(domain, wait, cancelled):
                return
            current = self.hv.lookup(domain)
            if current is None or current.state == DomainState.SHUTOFF:
                return
            info = current
        why = "preempted" if domain in self._preempted else "over"
        log.info("grace period of %ss %s for %s; destroying", grace, why, domain)
        self.destroy(domain)

    def destroy(self, domain: str) -> None:
        with contextlib.suppress(FailedPrecondition):  # already off
            self.hv.destroy(domain)
        self.wait_for_shutoff(domain, _DESTROY_WAIT_SECONDS)

    def wait_for_shutoff(
        self, domain: str, timeout: float, cancelled: Callable[[], bool] = never
    ) -> bool:
        def stopped(record: VMRecord | None) -> bool:
            return record is None or record.status.phase not in ACTIVE_PHASES

        def done(record: VMRecord | None) -> bool:
            return stopped(record) or domain in self._preempted or cancelled()

        waited = self.cache.wait_until(domain, done, timeout, clock=self.clock)
        if waited and stopped(self.cache.get(domain)):
            return True
        info = self.hv.lookup(domain)  # an event may have been missed: ask libvirt directly
        return info is None or info.state == DomainState.SHUTOFF

    def remove(self, domain: str, spec: VMSpec, books: Bookkeeping) -> None:
        """Undefine a stopped domain and remove everything made for it."""
        with contextlib.suppress(FailedPrecondition):
            self.hv.destroy(domain)  # normally already off; a failed start may leave it paused
        self.hv.undefine(domain)
        # The VM is gone now: every cleanup runs even if one fails (a leftover tap or nft
        # element is removed by the next reconcile; files and the record go regardless).
        try:
            self.network.unplug(domain, spec, books.network)
        except Exception:
            log.exception(
                "unplugging %s failed; the network reconcile removes what is left", domain
            )
        finally:
            self.claims.forget(domain)
            self._remove_files(domain, spec)
            self.cache.remove(domain)

    def _remove_files(self, domain: str, spec: VMSpec) -> None:
        """The VM's files, and the delete-with-vm claims its import made that no other
        defined VM names (kept when the other VMs cannot be listed)."""
        try:
            others = self.claims.others(domain)
        except Exception:
            log.exception("listing VMs failed: keeping the delete-with-vm claims of %s", domain)
            self.files.remove(domain)
            return
        self.files.remove(domain, spec, others)

    def save_books(
        self, domain: str, spec: VMSpec, books: Bookkeeping, *, live: bool = False
    ) -> None:
        """Store the books in the definition (and, with ``live``, in the running guest's XML,
        which a migration carries to the target)."""
        self.hv.set_metadata(domain, metadata_payload(spec, books), live=live)


def _start_pending(books: Bookkeeping, state: DomainState) -> bool:
    """A stored start mark still shows the VM Pending, unless the guest ran and went off
    (its real phase, e.g. Failed for a crash, is what clients must see)."""
    return books.starting and not (books.resumed and state == DomainState.SHUTOFF)


def _gate_ready(status: VMStatus, passed: bool) -> VMStatus:
    """A running VM with a readiness probe is Ready only once the probe passes."""
    ready = Condition("Ready", passed, reason="" if passed else "ReadinessProbe")
    if not passed:
        ready = dataclasses.replace(ready, message="the readiness probe has not passed yet")
    conditions = tuple(ready if c.type == "Ready" else c for c in status.conditions)
    return dataclasses.replace(status, conditions=conditions)
