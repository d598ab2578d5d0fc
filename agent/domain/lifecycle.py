"""VMService: define, start, stop, pause, restart and delete VMs; idempotent, one op per VM.

Every verb measures, then acts: starting a running VM, stopping a stopped one and applying an
identical spec change nothing. Operations on one VM are serialised (a second concurrent one
fails with Conflict; different VMs proceed in parallel). Guests start paused, get plumbed,
then run (Nova's ordering); a VM that cannot start is not left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Iterator

import agent.metrics.agent_metrics as agent_metrics
from agent.domain.capabilities import ASSUMED_SUPPORT, NodeSupport
from agent.domain.claimgate import ClaimWatch
from agent.domain.clock import SYSTEM_CLOCK
from agent.domain.files import VMFiles
from agent.domain.oplocks import VMLocks
from agent.domain.readiness import Readiness
from agent.domain.requests import RequestLog
from agent.domain.restarts import STARTED_ON_CREATE, should_restart
from agent.domain.resync_loop import PeriodicResync
from agent.domain.steps import Current, DomainSteps, never
from agent.domain.sync import NodeSync, Spawn
from agent.domain.vmcache import VMCache, VMRecord
from agent.errors import AlreadyExists, Conflict, FailedPrecondition
from agent.models import Bookkeeping, RunStrategy, VMSpec
from agent.naming import domain_name
from agent.network.none import NoNetwork
from agent.ports import Clock, DomainEvent, DomainState, Hypervisor, VMNetwork

__all__ = ["VMService"]

log = logging.getLogger(__name__)

_RUNNING = (DomainState.RUNNING, DomainState.BLOCKED)


def spawn_thread(name: str, work: Callable[[], None]) -> None:
    """Run the agent's own background work on a daemon thread named ``name``."""
    threading.Thread(target=work, name=name, daemon=True).start()


class VMService:
    """The node's VMs, driven through a Hypervisor port.

    Usage::

        service = VMService(hv, files, VMCache(), node_name="node-1", virt_type="qemu")
        service.resync()
        record, changed = service.apply(spec)
        service.stop("default", "web", grace_period=30)
    """

    def __init__(
        self,
        hv: Hypervisor,
        files: VMFiles,
        cache: VMCache,
        *,
        node_name: str,
        virt_type: str,
        network: VMNetwork | None = None,
        readiness: Readiness | None = None,
        clock: Clock = SYSTEM_CLOCK,
        spawn: Spawn = spawn_thread,
        support: NodeSupport = ASSUMED_SUPPORT,
    ) -> None:
        self.hv = hv
        self.cache = cache
        self.node_name = node_name
        self.virt_type = virt_type
        self.network: VMNetwork = network or NoNetwork()
        self.files = files
        self.readiness = readiness or Readiness()
        self.clock = clock
        self._spawn = spawn  # tests run background work (note-stop, restarts) when they choose
        self.steps = DomainSteps(
            hv,
            files,
            self.network,
            cache,
            node_name=node_name,
            virt_type=virt_type,
            clock=clock,
            support=support,
        )
        self.requests = RequestLog()
        self._vm_locks = VMLocks(self.steps.preempt)
        self._holders = self._vm_locks.holders  # what holds each VM's lock
        self.sync = NodeSync(
            hv,
            self.steps,
            files,
            self.network,
            cache,
            readiness=self.readiness,
            clock=clock,
            spawn=spawn,
            operation=self._operation,
            busy=lambda: tuple(self._holders),
        )
        # Started by the agent (Agent.start): VMs waiting for claims start when they appear.
        self.claim_watch = ClaimWatch(self.sync.check_claims)

    periodic_resync: PeriodicResync | None = None  # (start_background makes it)

    def start_background(self, resync_interval: float) -> None:
        """The agent's periodic work: claim checks, and every ``resync_interval`` seconds
        (0: never) the resync that puts back what changed on the node (repair_network)."""
        self.claim_watch.start()
        self.periodic_resync = PeriodicResync.of(self.sync, resync_interval)
        self.periodic_resync.start()

    def stop_background(self) -> None:
        if self.periodic_resync is not None:
            self.periodic_resync.stop()
        self.claim_watch.stop()

    # -- reading ------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> VMRecord:
        return self.steps.record(domain_name(namespace, name))

    # -- apply --------------------------------------------------------------------------

    def apply(self, spec: VMSpec, request_id: str = "") -> tuple[VMRecord, bool]:
        """Create or update a VM from its full spec; returns the record and whether it changed."""
        domain = domain_name(spec.namespace, spec.name)
        if not RequestLog.missing(self.requests.recall(request_id, "apply", domain)):
            return self.steps.record(domain), False
        with self._operation(domain, "apply"):
            current = self.steps.read(domain)
            if current is None:
                record, changed = self._create(domain, spec), True
            else:
                record, changed = self._update(domain, spec, current)
        self.requests.remember(request_id, "apply", domain, True)
        return record, changed

    def _create(self, domain: str, spec: VMSpec) -> VMRecord:
        spec = dataclasses.replace(spec, uid=spec.uid or str(uuid.uuid4()))
        books = Bookkeeping(generation=1, created_at=self.clock.now(), node_name=self.node_name)
        books = dataclasses.replace(books, network=self.network.allocate(domain, spec, None))
        started = spec.run_strategy in STARTED_ON_CREATE
        if started:  # the start mark goes with the first define (see DomainSteps.start)
            books = dataclasses.replace(books, starting=True, started_at=books.created_at)
        try:
            self.steps.define(domain, spec, books, new=True)
        except Exception:
            self.network.unplug(domain, spec, books.network)  # gives back what allocate took
            raise
        self.network.settle(domain, books.network)
        if started:
            try:
                self.steps.start(domain, marked=True)
            except Exception:
                # A VM that cannot start is not created: nothing half-made stays behind.
                self.steps.remove(domain, spec, books)
                raise
        return self.steps.refreshed(domain)

    def _update(self, domain: str, spec: VMSpec, current: Current) -> tuple[VMRecord, bool]:
        """Store a changed spec; a running guest keeps its old one until it restarts."""
        info, stored, books = current
        if spec.uid and spec.uid != stored.uid:
            raise AlreadyExists(
                f"vm {spec.key} exists with uid {stored.uid}, not {spec.uid}; delete it first"
            )
        spec = dataclasses.replace(spec, uid=stored.uid)
        if spec == stored:
            record = self.steps.refreshed(domain)
            if should_restart(record):  # e.g. created, but the agent died before starting it
                self.steps.start(domain)
                record = self.steps.refreshed(domain)
            return record, False
        held = books.network
        network = self.network.allocate(domain, spec, held)
        books = dataclasses.replace(books, generation=books.generation + 1, network=network)
        try:
            self.steps.define(domain, spec, books, new=False)
        except Exception:
            self.network.settle(domain, held)  # libvirt's books still store the old one
            raise
        self.network.settle(domain, books.network)
        running = info.state != DomainState.SHUTOFF
        if spec.run_strategy != stored.run_strategy:
            # Once starts a VM that never ran (a VMI an older vmctl made Manual, say).
            once = spec.run_strategy == RunStrategy.ONCE and not books.started_at
            if (spec.run_strategy == RunStrategy.ALWAYS or once) and not running:
                self.steps.start(domain)
            elif spec.run_strategy == RunStrategy.HALTED and (running or books.starting):
                # (A VM waiting for its claims is not running but marked starting.)
                self.steps.stop(domain, spec.termination_grace_period_seconds, force=False)
        return self.steps.refreshed(domain), True

    # -- imperative verbs ---------------------------------------------------------------

    def start(self, namespace: str, name: str, request_id: str = "") -> VMRecord:
        return self._verb("start", namespace, name, request_id, lambda d, _: self.steps.start(d))

    def stop(
        self,
        namespace: str,
        name: str,
        *,
        grace_period: int | None = None,
        force: bool = False,
        request_id: str = "",
        cancelled: Callable[[], bool] = never,
    ) -> VMRecord:
        def stop(domain: str, current: Current) -> None:
            grace = current[1].termination_grace_period_seconds
            grace = grace if grace_period is None else grace_period
            self.steps.stop(domain, grace, force=force, cancelled=cancelled)

        forced = force or grace_period == 0  # preempts a graceful stop in flight
        return self._verb("stop", namespace, name, request_id, stop, preempt=forced)

    def restart(self, namespace: str, name: str, *, hard: bool, request_id: str = "") -> VMRecord:
        """Soft: the guest reboots (ACPI). Hard: power-cycle, which applies a pending spec."""

        def restart(domain: str, current: Current) -> None:
            info = current[0]
            if hard:
                if info.state != DomainState.SHUTOFF:
                    self.hv.destroy(domain)
                self.steps.start(domain)
                return
            if info.state not in _RUNNING:
                raise FailedPrecondition(f"vm {namespace}/{name} is not running; a soft "
                                         "restart needs a running guest")  # fmt: skip
            self.hv.reboot(domain)

        verb = "hard-restart" if hard else "restart"
        return self._verb(verb, namespace, name, request_id, restart, preempt=hard)

    def pause(self, namespace: str, name: str, request_id: str = "") -> VMRecord:
        def pause(domain: str, current: Current) -> None:
            state = current[0].state
            if state == DomainState.PAUSED:
                return
            if state not in _RUNNING:
                raise FailedPrecondition(f"vm {namespace}/{name} is not running")
            self.hv.suspend(domain)

        return self._verb("pause", namespace, name, request_id, pause)

    def resume(self, namespace: str, name: str, request_id: str = "") -> VMRecord:
        def resume(domain: str, current: Current) -> None:
            state = current[0].state
            if state in _RUNNING:
                return
            if state != DomainState.PAUSED:
                raise FailedPrecondition(f"vm {namespace}/{name} is not paused")
            self.hv.resume(domain)

        return self._verb("resume", namespace, name, request_id, resume)

    def delete(
        self,
        namespace: str,
        name: str,
        *,
        grace_period: int | None = None,
        request_id: str = "",
        cancelled: Callable[[], bool] = never,
    ) -> None:
        """Stop the VM (within its grace period), then remove it and all its files."""
        domain = domain_name(namespace, name)
        if not RequestLog.missing(self.requests.recall(request_id, "delete", domain)):
            return
        with self._operation(domain, "delete", preempt=grace_period == 0):
            _, spec, books = self.steps.require(domain)
            grace = spec.termination_grace_period_seconds if grace_period is None else grace_period
            self.steps.stop(domain, grace, force=False, cancelled=cancelled)
            self.steps.remove(domain, spec, books)
        self.sync.forget(domain)
        self.requests.remember(request_id, "delete", domain, True)

    def _verb(
        self,
        verb: str,
        namespace: str,
        name: str,
        request_id: str,
        action: Callable[[str, Current], None],
        *,
        preempt: bool = False,
    ) -> VMRecord:
        domain = domain_name(namespace, name)
        if not RequestLog.missing(self.requests.recall(request_id, verb, domain)):
            return self.get(namespace, name)
        with self._operation(domain, verb, preempt=preempt):
            action(domain, self.steps.require(domain))
            record = self.steps.refreshed(domain)
        self.requests.remember(request_id, verb, domain, True)
        return record

    def exclusive(self, domain: str, verb: str) -> contextlib.AbstractContextManager[None]:
        """Hold the VM's lock for a long operation of another module (a migration): verbs on
        the VM meanwhile fail with Conflict naming ``verb``."""
        return self._operation(domain, verb)

    @contextlib.contextmanager
    def _operation(
        self, domain: str, verb: str, *, wait: float = 0.0, preempt: bool = False
    ) -> Iterator[None]:
        """Hold the VM's lock: at once (Conflict when a client's call holds it) or within
        ``wait`` seconds. The agent's short background work is waited for, and a forced
        (``preempt``) verb cuts a graceful stop in flight short, then runs."""
        with (
            agent_metrics.operation(verb, conflict=Conflict),
            self._vm_locks.held(domain, verb, wait=wait, preempt=preempt),
        ):
            yield

    # -- keeping the node in line with the specs (agent/domain/sync.py) ------------------

    def resync(self) -> None:
        """Rebuild the VM cache from libvirt: adopt every domain the agent made, drop the rest."""
        self.sync.resync()

    def on_connection(self, connected: bool) -> None:
        """libvirt came (back): read every VM again; libvirt went: not ready until then."""
        self.sync.on_connection(connected)

    def on_domain_event(self, event: DomainEvent) -> None:
        """Handle a domain's lifecycle event (called on the adapter's dispatcher thread)."""
        self.sync.on_domain_event(event)
