"""VMService: define, start, stop, pause, restart and delete VMs; idempotent, one op per VM.

Every verb measures, then acts: starting a running VM, stopping a stopped one and applying
an identical spec change nothing. Operations on one VM are serialised (a second concurrent
one fails with Conflict); different VMs proceed in parallel. Guests start paused, get
plumbed, then run (Nova's ordering), and a failed start leaves nothing running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from agent.domain.files import VMFiles
from agent.domain.metadata import (
    Bookkeeping,
    CorruptMetadata,
    metadata_element,
    metadata_payload,
    read_metadata,
)
from agent.domain.plan import HostPlan
from agent.domain.registry import Registry, VMRecord
from agent.domain.requests import RequestLog
from agent.domain.status import derive_status
from agent.domain.xml import domain_name, domain_xml
from agent.errors import AlreadyExists, Conflict, FailedPrecondition, NotFound
from agent.labels import matches_selector, parse_selector
from agent.models import Phase, RunStrategy, VMSpec
from agent.network.none import NoNetwork
from agent.ports import DomainInfo, DomainState, Hypervisor, VMNetwork

__all__ = ["VMService"]

log = logging.getLogger(__name__)

_ACTIVE = {Phase.RUNNING, Phase.PAUSED, Phase.PENDING, Phase.MIGRATING}
_SHUTDOWN_RESEND_SECONDS = 5.0  # a booting guest can miss an ACPI event (KubeVirt, Nova)
_DESTROY_WAIT_SECONDS = 30.0


class VMService:
    """The node's VMs, driven through a Hypervisor port.

    Usage::

        service = VMService(hv, files, Registry(), node_name="node-1", virt_type="qemu")
        service.resync()
        record, changed = service.apply(spec)
        service.stop("default", "web", grace_period=30)
    """

    def __init__(
        self,
        hv: Hypervisor,
        files: VMFiles,
        registry: Registry,
        *,
        node_name: str,
        virt_type: str,
        network: VMNetwork | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hv = hv
        self.network: VMNetwork = network or NoNetwork()
        self.files = files
        self.registry = registry
        self.node_name = node_name
        self.virt_type = virt_type
        self.clock = clock
        self.requests = RequestLog()
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._starting: set[str] = set()
        self._refresh_lock = threading.Lock()
        self._restart_backoff: dict[str, float] = {}

    # -- reading ------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> VMRecord:
        record = self.registry.get(domain_name(namespace, name))
        if record is None:
            raise NotFound(f"vm {namespace}/{name} not found")
        return record

    def list(self, namespace: str = "", selector: str = "") -> list[VMRecord]:
        requirements = parse_selector(selector)
        records = [
            r
            for r in self.registry.records()
            if (not namespace or r.spec.namespace == namespace)
            and matches_selector(r.spec.labels, requirements)
        ]
        return sorted(records, key=lambda r: (r.spec.namespace, r.spec.name))

    def console_log_path(self, namespace: str, name: str) -> str:
        self.get(namespace, name)
        return self.files.console_log(domain_name(namespace, name))

    # -- verbs --------------------------------------------------------------------------

    def apply(self, spec: VMSpec, request_id: str = "") -> tuple[VMRecord, bool]:
        """Create or update a VM from its full spec; returns the record and whether it changed."""
        domain = domain_name(spec.namespace, spec.name)
        remembered = self.requests.recall(request_id, "apply", domain)
        if not RequestLog.missing(remembered):
            return self._record(domain), False
        with self._operation(domain, "apply"):
            current = self._read(domain)
            if current is None:
                record = self._create(domain, spec)
                changed = True
            else:
                record, changed = self._update(domain, spec, current)
        self.requests.remember(request_id, "apply", domain, True)
        return record, changed

    def _create(self, domain: str, spec: VMSpec) -> VMRecord:
        spec = dataclasses.replace(spec, uid=spec.uid or str(uuid.uuid4()))
        books = Bookkeeping(generation=1, created_at=self.clock(), node_name=self.node_name)
        books = self.network.allocate(domain, spec, books)
        try:
            self._define(domain, spec, books, new=True)
        except Exception:
            self.network.unplug(domain, spec, books)  # gives back what allocate took
            raise
        if spec.run_strategy in (RunStrategy.ALWAYS, RunStrategy.RERUN_ON_FAILURE):
            try:
                self._start(domain)
            except Exception:
                # A VM that cannot start is not created: nothing half-made stays behind.
                self._remove(domain, spec, books)
                raise
        return self._refresh(domain) or self._record(domain)

    def _update(
        self, domain: str, spec: VMSpec, current: tuple[DomainInfo, VMSpec, Bookkeeping]
    ) -> tuple[VMRecord, bool]:
        info, stored, books = current
        if spec.uid and spec.uid != stored.uid:
            raise AlreadyExists(
                f"vm {spec.key} exists with uid {stored.uid}, not {spec.uid}; delete it first"
            )
        spec = dataclasses.replace(spec, uid=stored.uid)
        if spec == stored:
            return self._refresh(domain) or self._record(domain), False
        books = dataclasses.replace(books, generation=books.generation + 1)
        books = self.network.allocate(domain, spec, books)
        self._define(domain, spec, books, new=False)
        running = info.state != DomainState.SHUTOFF
        if spec.run_strategy != stored.run_strategy:
            if spec.run_strategy == RunStrategy.ALWAYS and not running:
                self._start(domain)
            elif spec.run_strategy == RunStrategy.HALTED and running:
                self._stop(domain, spec.termination_grace_period_seconds, force=False)
        return self._refresh(domain) or self._record(domain), True

    def start(self, namespace: str, name: str, request_id: str = "") -> VMRecord:
        return self._verb("start", namespace, name, request_id, self._start)

    def stop(
        self,
        namespace: str,
        name: str,
        *,
        grace_period: int | None = None,
        force: bool = False,
        request_id: str = "",
    ) -> VMRecord:
        def stop(domain: str) -> None:
            grace = grace_period
            if grace is None:
                grace = self._record(domain).spec.termination_grace_period_seconds
            self._stop(domain, grace, force=force)

        return self._verb("stop", namespace, name, request_id, stop)

    def restart(self, namespace: str, name: str, *, hard: bool, request_id: str = "") -> VMRecord:
        def restart(domain: str) -> None:
            info = self._require_info(domain)
            if hard:
                if info.state != DomainState.SHUTOFF:
                    self.hv.destroy(domain)
                self._start(domain)
                return
            if info.state not in (DomainState.RUNNING, DomainState.BLOCKED):
                raise FailedPrecondition(
                    f"vm {namespace}/{name} is not running; a soft restart needs a running guest"
                )
            self.hv.reboot(domain)

        return self._verb(
            "hard-restart" if hard else "restart", namespace, name, request_id, restart
        )

    def pause(self, namespace: str, name: str, request_id: str = "") -> VMRecord:
        def pause(domain: str) -> None:
            info = self._require_info(domain)
            if info.state == DomainState.PAUSED:
                return
            if info.state not in (DomainState.RUNNING, DomainState.BLOCKED):
                raise FailedPrecondition(f"vm {namespace}/{name} is not running")
            self.hv.suspend(domain)

        return self._verb("pause", namespace, name, request_id, pause)

    def resume(self, namespace: str, name: str, request_id: str = "") -> VMRecord:
        def resume(domain: str) -> None:
            info = self._require_info(domain)
            if info.state in (DomainState.RUNNING, DomainState.BLOCKED):
                return
            if info.state != DomainState.PAUSED:
                raise FailedPrecondition(f"vm {namespace}/{name} is not paused")
            self.hv.resume(domain)

        return self._verb("resume", namespace, name, request_id, resume)

    def delete(
        self, namespace: str, name: str, *, grace_period: int | None = None, request_id: str = ""
    ) -> None:
        """Stop the VM (within its grace period), then remove it and all its files."""
        domain = domain_name(namespace, name)
        if not RequestLog.missing(self.requests.recall(request_id, "delete", domain)):
            return
        with self._operation(domain, "delete"):
            current = self._read(domain)
            if current is None:
                raise NotFound(f"vm {namespace}/{name} not found")
            grace = grace_period
            if grace is None:
                grace = current[1].termination_grace_period_seconds
            self._stop(domain, grace, force=False)
            self._remove(domain, current[1], current[2])
        self.requests.remember(request_id, "delete", domain, True)

    def _remove(self, domain: str, spec: VMSpec, books: Bookkeeping) -> None:
        """Undefine a stopped domain and remove everything made for it."""
        with contextlib.suppress(FailedPrecondition):
            self.hv.destroy(domain)  # normally already off; a failed start may leave it paused
        self.hv.undefine(domain)
        self.network.unplug(domain, spec, books)
        self.files.remove(domain)
        self.registry.remove(domain)

    def _verb(
        self,
        verb: str,
        namespace: str,
        name: str,
        request_id: str,
        action: Callable[[str], None],
    ) -> VMRecord:
        domain = domain_name(namespace, name)
        if not RequestLog.missing(self.requests.recall(request_id, verb, domain)):
            return self.get(namespace, name)
        with self._operation(domain, verb):
            if self._read(domain) is None:
                raise NotFound(f"vm {namespace}/{name} not found")
            action(domain)
            record = self._refresh(domain) or self._record(domain)
        self.requests.remember(request_id, verb, domain, True)
        return record

    # -- steps --------------------------------------------------------------------------

    def _define(self, domain: str, spec: VMSpec, books: Bookkeeping, *, new: bool) -> None:
        try:
            prepared = self.files.prepare(spec, domain)
            plan = HostPlan(
                domain_name=domain,
                uuid=spec.uid,
                virt_type=self.virt_type,
                kernel=prepared.kernel,
                initrd=prepared.initrd,
                console_log=prepared.console_log,
                disks=prepared.disks,
                nics=self.network.nics(domain, spec, books),
                metadata=metadata_element(spec, books),
            )
            self.hv.define(domain_xml(spec, plan))
        except Exception:
            if new:
                self.files.remove(domain)
            raise

    def _start(self, domain: str) -> None:
        """Boot the domain paused, plumb it, then let it run; undo on failure."""
        info, spec, books = self._require(domain)
        if info.state != DomainState.SHUTOFF:
            if info.state == DomainState.PAUSED and info.reason == "user":
                return  # a paused VM is started; resume is its own verb
            return
        books = dataclasses.replace(books, started_at=self.clock(), halted=False)
        self._save_books(domain, spec, books)
        self._starting.add(domain)
        try:
            # Taps must exist before QEMU opens them (managed='no'); NAT and DHCP are ready
            # before the guest runs, so its first DHCP request is answered.
            self.network.plug(domain, spec, books)
            self.hv.start(domain, paused=True)
            try:
                self.hv.resume(domain)
            except Exception:
                with contextlib.suppress(Exception):
                    self.hv.destroy(domain)
                raise
        finally:
            self._starting.discard(domain)

    def _stop(self, domain: str, grace: int, *, force: bool) -> None:
        """ACPI shutdown re-sent every few seconds, destroy when the grace period runs out."""
        info, spec, books = self._require(domain)
        if not books.halted:
            self._save_books(domain, spec, dataclasses.replace(books, halted=True))
        if info.state == DomainState.SHUTOFF:
            return
        if force or grace <= 0:
            self._destroy(domain)
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if info.state in (DomainState.PAUSED, DomainState.PMSUSPENDED):
                self.hv.resume(domain)  # a paused guest cannot react to the power button
            with contextlib.suppress(FailedPrecondition):
                self.hv.shutdown(domain)
            wait = min(_SHUTDOWN_RESEND_SECONDS, max(0.0, deadline - time.monotonic()))
            if self._wait_for_shutoff(domain, wait):
                return
            current = self.hv.lookup(domain)
            if current is None or current.state == DomainState.SHUTOFF:
                return
            info = current
        log.info("grace period of %ss over for %s; destroying", grace, domain)
        self._destroy(domain)

    def _destroy(self, domain: str) -> None:
        with contextlib.suppress(FailedPrecondition):  # already off
            self.hv.destroy(domain)
        self._wait_for_shutoff(domain, _DESTROY_WAIT_SECONDS)

    def _wait_for_shutoff(self, domain: str, timeout: float) -> bool:
        def stopped(record: VMRecord | None) -> bool:
            return record is None or record.status.phase not in _ACTIVE

        if self.registry.wait_until(domain, stopped, timeout):
            return True
        info = self.hv.lookup(domain)  # an event may have been missed: ask libvirt directly
        return info is None or info.state == DomainState.SHUTOFF

    def _save_books(self, domain: str, spec: VMSpec, books: Bookkeeping) -> None:
        self.hv.set_metadata(domain, metadata_payload(spec, books), live=False)

    # -- state --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _operation(self, domain: str, verb: str, *, wait: float = 0.0) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(domain, threading.Lock())
        if not lock.acquire(timeout=wait) if wait else not lock.acquire(blocking=False):
            namespace, _, name = domain.partition("_")
            raise Conflict(f"another operation on vm {namespace}/{name} is in progress; retry")
        try:
            yield
        finally:
            lock.release()

    def _read(self, domain: str) -> tuple[DomainInfo, VMSpec, Bookkeeping] | None:
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

    def _require(self, domain: str) -> tuple[DomainInfo, VMSpec, Bookkeeping]:
        current = self._read(domain)
        if current is None:
            namespace, _, name = domain.partition("_")
            raise NotFound(f"vm {namespace}/{name} not found")
        return current

    def _require_info(self, domain: str) -> DomainInfo:
        return self._require(domain)[0]

    def _record(self, domain: str) -> VMRecord:
        record = self.registry.get(domain)
        if record is None:
            namespace, _, name = domain.partition("_")
            raise NotFound(f"vm {namespace}/{name} not found")
        return record

    def _refresh(self, domain: str) -> VMRecord | None:
        """Read one domain from libvirt into the registry; the single place status is made."""
        # One refresh at a time: a slow read finishing after a newer one would store the past.
        with self._refresh_lock:
            return self._refresh_locked(domain)

    def _refresh_locked(self, domain: str) -> VMRecord | None:
        info = self.hv.lookup(domain)
        parsed = read_metadata(info.config_xml) if info else None
        if info is None or parsed is None:
            self.registry.remove(domain)
            return None
        spec, books = parsed
        live = read_metadata(info.live_xml) if info.live_xml else None
        status = derive_status(
            info,
            generation=books.generation,
            running_generation=live[1].generation if live else 0,
            node_name=self.node_name,
            started_at=books.started_at,
            stopped_at=books.stopped_at,
            never_started=not books.started_at,
            starting=domain in self._starting,
        )
        interfaces = self.network.interfaces(domain, spec, books)
        status = dataclasses.replace(status, interfaces=interfaces)
        record = VMRecord(spec=spec, books=books, status=status)
        self.registry.put(domain, record)
        return record

    # -- keeping the node in line with the specs ------------------------------------------

    def resync(self) -> None:
        """Rebuild the registry from libvirt: adopt every domain the agent made, drop the rest."""
        seen = set()
        ours: dict[str, tuple[VMSpec, Bookkeeping, bool]] = {}
        for info in self.hv.list_domains():
            try:
                parsed = read_metadata(info.config_xml)
            except CorruptMetadata:
                log.exception("domain %s has unreadable virt-agent metadata; left alone", info.name)
                continue
            if parsed is None:
                continue  # not ours: never touched
            seen.add(info.name)
            ours[info.name] = (parsed[0], parsed[1], info.state != DomainState.SHUTOFF)
            record = self._refresh(info.name)
            if record is not None and self._should_restart(record, detail=""):
                self._restart_later(info.name, delay=0.0)
        for stale in self.registry.names() - seen:
            self.registry.remove(stale)
        # Repair the plumbing of running VMs; remove what belongs to VMs that are gone.
        self.network.reconcile(ours)
        self.registry.synced.set()

    def on_event(self, event: Any) -> None:
        """Handle a hypervisor event (called on the adapter's dispatcher thread)."""
        if event.event == "connected":
            threading.Thread(target=self._safe_resync, name="resync", daemon=True).start()
            return
        if not event.name or event.event == "disconnected":
            return
        try:
            record = self._refresh(event.name)
        except Exception:
            log.exception("refreshing %s after %s/%s", event.name, event.event, event.detail)
            return
        if record is not None and event.event == "stopped":
            if self._should_restart(record, detail=event.detail):
                self._restart_later(event.name, delay=self._next_backoff(event.name))
        elif event.event == "started":
            self._restart_backoff.pop(event.name, None)

    def _safe_resync(self) -> None:
        try:
            self.resync()
        except Exception:
            log.exception("resync failed")

    @staticmethod
    def _should_restart(record: VMRecord, *, detail: str) -> bool:
        if record.books.halted or record.status.phase in _ACTIVE:
            return False
        if not record.books.started_at:
            return False
        if record.spec.run_strategy == RunStrategy.ALWAYS:
            return True
        failed = record.status.phase == Phase.FAILED or detail in ("crashed", "failed")
        return record.spec.run_strategy == RunStrategy.RERUN_ON_FAILURE and failed

    def _next_backoff(self, domain: str) -> float:
        delay = self._restart_backoff.get(domain, 0.0)
        self._restart_backoff[domain] = min(max(delay * 2, 1.0), 60.0)
        return delay

    def _restart_later(self, domain: str, *, delay: float) -> None:
        def run() -> None:
            time.sleep(delay)  # crash-loop backoff; 0 for the first restart
            try:
                with self._operation(domain, "restart-on-failure", wait=60.0):
                    current = self._refresh(domain)
                    if current is not None and self._should_restart(current, detail=""):
                        log.info(
                            "restarting %s (runStrategy %s)", domain, current.spec.run_strategy
                        )
                        self._start(domain)
                        self._refresh(domain)
            except Exception:
                log.exception("restarting %s failed", domain)

        threading.Thread(target=run, name=f"restart-{domain}", daemon=True).start()
