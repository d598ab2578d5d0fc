"""The source side of a live migration: the whole flow a control plane starts with one call.

validate → wait for an outbound slot (Pending) → hold the VM (other verbs get Conflict) →
the target prepares (Preparing) → libvirt migrates in a background thread while a monitor
reads its job stats every second and applies the policy (Running) → on success the source
removes every trace of the VM (tap, nft elements, DHCP lease, files, VM cache entry); on
failure or cancel the VM keeps running here and the target removes its preparations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.domain.lifecycle import VMService
from agent.domain.metadata import metadata_payload
from agent.errors import (
    AgentError,
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidSpec,
    ResourceExhausted,
)
from agent.migration import xml as migration_xml
from agent.migration.policy import (
    Abort,
    Decision,
    MigrationOptions,
    Policy,
    SetDowntime,
    StartPostCopy,
)
from agent.migration.ports import MigrationTarget, PreparedTarget, TargetAgents
from agent.migration.records import SOURCE, MigrationBook, MigrationRecord, State
from agent.models import Bookkeeping, Phase, VMSpec
from agent.naming import domain_name, vm_key
from agent.ports import DomainState, JobSample, MigrationJob, Migrator

__all__ = ["OutgoingMigrations"]

log = logging.getLogger(__name__)


@dataclass
class _Control:
    """What callers may ask of a running migration (read by its thread)."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    policy: Policy | None = None
    abort_reason: str = ""


class OutgoingMigrations:
    """Migrations leaving this node, at most ``max_outbound`` at once (more wait, Pending)."""

    def __init__(
        self,
        service: VMService,
        migrator: Migrator,
        agents: TargetAgents,
        book: MigrationBook,
        *,
        max_outbound: int = 2,
        enabled: bool = True,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.migrator = migrator
        self.agents = agents
        self.book = book
        self.enabled = enabled
        self._slots = threading.Semaphore(max_outbound)
        self._poll = poll_interval
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._controls: dict[str, _Control] = {}
        self._requests: dict[str, str] = {}  # request id → migration id

    # -- API ------------------------------------------------------------------------------

    def start(
        self,
        namespace: str,
        name: str,
        target_agent: str,
        options: MigrationOptions,
        request_id: str = "",
    ) -> MigrationRecord:
        """Validate and start; returns at once with the record (Pending)."""
        with self._lock:
            if request_id in self._requests:
                return self.book.get(self._requests[request_id])
            record = self._new_record(namespace, name, target_agent, options)
            self._controls[record.id] = _Control()
            if request_id:
                self._requests[request_id] = record.id
        # daemon: libvirtd carries a migration on without the agent, whose exit must not wait
        threading.Thread(
            target=self._run, args=(record.id,), name=f"migrate-{name}", daemon=True
        ).start()
        return record

    def cancel(self, migration_id: str) -> MigrationRecord:
        record = self.book.get(migration_id)
        control = self._controls.get(migration_id)
        if record.role != SOURCE or control is None:
            raise FailedPrecondition(
                f"migration {migration_id} is cancelled on its source node {record.source_node}"
            )
        if record.ended:
            return record
        control.cancelled.set()
        if record.state == State.RUNNING:
            with contextlib.suppress(AgentError):
                self.migrator.abort(record.domain)
        return self.book.get(migration_id)

    def update(
        self, migration_id: str, *, bandwidth_mib: int | None, max_downtime_ms: int | None
    ) -> MigrationRecord:
        record = self.book.get(migration_id)
        control = self._controls.get(migration_id)
        if record.ended or control is None or record.role != SOURCE:
            raise FailedPrecondition(f"migration {migration_id} is not running on this node")
        options = record.options
        if bandwidth_mib is not None:
            options = _replace(options, bandwidth_mib=bandwidth_mib)
        if max_downtime_ms is not None:
            options = _replace(options, max_downtime_ms=max_downtime_ms)
        options.validate("options")
        if record.state == State.RUNNING:
            if bandwidth_mib is not None:
                self.migrator.set_max_speed(record.domain, bandwidth_mib)
            if max_downtime_ms is not None and control.policy is not None:
                control.policy.set_max_downtime(max_downtime_ms)
                self.migrator.set_max_downtime(record.domain, control.policy.downtime_ms)
        return self.book.update(migration_id, options=options)

    # -- the flow -------------------------------------------------------------------------

    def _new_record(
        self, namespace: str, name: str, target_agent: str, options: MigrationOptions
    ) -> MigrationRecord:
        if not self.enabled:
            raise FailedPrecondition(f"node {self.service.node_name} runs with --no-migration")
        if not target_agent:
            raise InvalidSpec("target_agent", "is required (host:port of the target's agent)")
        options.validate("options")
        domain = domain_name(namespace, name)
        active = self.book.active_for(domain, SOURCE)
        if active is not None:
            raise AlreadyExists(f"vm {vm_key(domain)} is already migrating: migration {active.id}")
        vm = self.service.get(namespace, name)  # NotFound
        if vm.status.phase != Phase.RUNNING:
            raise FailedPrecondition(
                f"vm {vm_key(domain)} is {vm.status.phase.value}; only a running VM migrates"
            )
        if vm.status.running_generation and vm.status.running_generation != vm.books.generation:
            raise FailedPrecondition(
                f"vm {vm_key(domain)} has a spec change waiting for a restart; restart it first"
            )
        return self.book.add(
            MigrationRecord(
                id=str(uuid.uuid4()), namespace=namespace, name=name, uid=vm.spec.uid,
                role=SOURCE, state=State.PENDING, source_node=self.service.node_name,
                target_agent=target_agent, started_at=self._clock(), options=options,
            )
        )  # fmt: skip

    def _run(self, migration_id: str) -> None:
        record = self.book.get(migration_id)
        control = self._controls[migration_id]
        try:
            with self._slots:
                if control.cancelled.is_set():
                    self._end(migration_id, State.CANCELLED, "cancelled before it started")
                    return
                with self.service.exclusive(record.domain, "migration"):
                    self._hold_and_migrate(migration_id, control)
        except AgentError as exc:  # refused or failed for a reason it names
            log.warning("migration %s of %s failed: %s", migration_id, vm_key(record.domain), exc)
            cancelled = control.cancelled.is_set()
            self._end(
                migration_id,
                State.CANCELLED if cancelled else State.FAILED,
                "cancelled" if cancelled else str(exc),
            )
        except Exception as exc:
            log.exception("migration %s of %s failed", migration_id, vm_key(record.domain))
            self._end(migration_id, State.FAILED, str(exc))
        finally:
            with self._lock:
                self._controls.pop(migration_id, None)

    def _hold_and_migrate(self, migration_id: str, control: _Control) -> None:
        record = self.book.get(migration_id)
        steps = self.service.steps
        steps.migrating.add(record.domain)
        steps.refresh(record.domain)
        try:
            self._migrate(migration_id, control)
        finally:
            steps.migrating.discard(record.domain)
            with contextlib.suppress(Exception):
                steps.refresh(record.domain)

    def _migrate(self, migration_id: str, control: _Control) -> None:
        record = self.book.update(migration_id, state=State.PREPARING)
        domain = record.domain
        _, spec, books = self.service.steps.require(domain)
        live_xml, persistent_xml = self.migrator.migratable_xml(domain)
        target = self.agents.connect(record.target_agent)
        try:
            prepared = self._prepare_target(
                target, record, metadata_payload(spec, books), spec.memory_bytes, control
            )
            self.book.update(migration_id, target_node=prepared.node_name)
            options = record.options
            job = MigrationJob(
                libvirt_uri=prepared.libvirt_uri,
                migration_uri=prepared.migration_uri,
                dest_xml=migration_xml.for_target(live_xml, prepared.domain_xml),
                persist_xml=migration_xml.for_target(persistent_xml, prepared.domain_xml),
                bandwidth_mib=options.bandwidth_mib,
                parallel_connections=options.parallel_connections,
                auto_converge=options.auto_converge,
                post_copy=options.post_copy,
                copy_disks=migration_xml.copied_disks(spec, prepared.domain_xml),
                shared_disks=migration_xml.has_shared_disks(spec),
            )
            error = self._run_job(migration_id, control, job, spec.memory_bytes)
            self._conclude(migration_id, control, target, error, (spec, books))
        except Exception as exc:
            self._tell_target(target, migration_id, succeeded=False, message=str(exc))
            raise
        finally:
            target.close()

    def _prepare_target(
        self,
        target: MigrationTarget,
        record: MigrationRecord,
        metadata: str,
        memory: int,
        control: _Control,
    ) -> PreparedTarget:
        """The target's answer; while it is busy with other incoming migrations, Pending."""
        delay = 1.0
        while True:
            try:
                return target.prepare(record.id, record.namespace, record.name, metadata, memory)
            except ResourceExhausted as exc:
                self.book.update(record.id, state=State.PENDING, message=str(exc))
                if control.cancelled.wait(delay):
                    raise Conflict("cancelled while waiting for the target") from exc
                delay = min(delay * 2, 10.0)
                self.book.update(record.id, state=State.PREPARING, message="")

    def _run_job(self, migration_id: str, control: _Control, job: MigrationJob, size: int) -> str:
        """Migrate with the monitor running; returns "" on success, else why it failed."""
        domain = self.book.get(migration_id).domain
        if control.cancelled.is_set():
            return "cancelled before it started"
        control.policy = Policy(self.book.get(migration_id).options, size, self._monotonic)
        self.book.update(migration_id, state=State.RUNNING)
        done = threading.Event()
        monitor = threading.Thread(
            target=self._monitor,
            args=(migration_id, control, done),
            name=f"monitor-{domain}",
            daemon=True,
        )
        monitor.start()
        try:
            self.migrator.migrate(domain, job)
            return ""
        except AgentError as exc:
            return control.abort_reason or str(exc)
        finally:
            done.set()
            monitor.join()

    def _conclude(
        self,
        migration_id: str,
        control: _Control,
        target: MigrationTarget,
        error: str,
        vm: tuple[VMSpec, Bookkeeping],
    ) -> None:
        record = self.book.get(migration_id)
        if error:
            log.warning("migration %s of %s failed: %s", migration_id, record.domain, error)
            self._tell_target(target, migration_id, succeeded=False, message=error)
            state = State.CANCELLED if control.cancelled.is_set() else State.FAILED
            self._end(migration_id, state, "cancelled" if state == State.CANCELLED else error)
            return
        downtime, final = self._tell_target(target, migration_id, succeeded=True, message="")
        self._clean_source(record.domain, *vm)
        changes: dict[str, object] = {"downtime_ms": downtime}
        if final.data_processed:
            changes["progress"] = final
        self._end(migration_id, State.SUCCEEDED, "", **changes)
        log.info("vm %s migrated to %s", vm_key(record.domain), record.target_node)

    def _tell_target(
        self, target: MigrationTarget, migration_id: str, *, succeeded: bool, message: str
    ) -> tuple[int, JobSample]:
        try:
            return target.finish(migration_id, succeeded=succeeded, message=message)
        except Exception as exc:
            # The target cleans up what is left when it sees no domain arrive (restart).
            log.warning("telling the target how migration %s ended failed: %s", migration_id, exc)
            return 0, JobSample()

    def _clean_source(self, domain: str, spec: VMSpec, books: Bookkeeping) -> None:
        """The guest runs on the target: remove what this node still has of it."""
        service = self.service
        current = service.steps.read(domain)
        if current is not None and current[0].state != DomainState.SHUTOFF:
            raise FailedPrecondition(f"vm {vm_key(domain)} still runs here after its migration")
        try:
            service.network.unplug(domain, spec, books.network)
        except Exception:
            log.exception("unplugging the migrated %s failed; reconcile removes it", domain)
        if current is not None:
            service.hv.undefine(domain)
        service.files.remove(domain)
        service.cache.remove(domain)

    def _monitor(self, migration_id: str, control: _Control, done: threading.Event) -> None:
        """Read the job stats every poll interval, publish them and apply the policy."""
        domain = self.book.get(migration_id).domain
        while not done.wait(self._poll):
            try:
                if control.cancelled.is_set():  # a cancel that came before the job existed
                    self.migrator.abort(domain)
                sample = self.migrator.job_stats(domain)
                if sample is None or control.policy is None:
                    continue
                decisions = control.policy.observe(sample)
                state = State.POST_COPY if sample.post_copy else State.RUNNING
                self.book.update(
                    migration_id,
                    progress=sample,
                    allowed_downtime_ms=control.policy.downtime_ms,
                    state=state,
                )
                for decision in decisions:
                    self._apply(migration_id, domain, control, decision)
            except Exception:
                log.exception("monitoring migration %s", migration_id)

    def _apply(self, migration_id: str, domain: str, control: _Control, decision: Decision) -> None:
        if isinstance(decision, SetDowntime):
            self.migrator.set_max_downtime(domain, decision.milliseconds)
        elif isinstance(decision, StartPostCopy):
            log.info("migration %s: switching to post-copy: %s", migration_id, decision.reason)
            self.migrator.start_post_copy(domain)
            self.book.update(migration_id, state=State.POST_COPY, message=decision.reason)
        elif isinstance(decision, Abort):
            log.warning("migration %s: aborting: %s", migration_id, decision.reason)
            control.abort_reason = decision.reason
            self.migrator.abort(domain)

    def _end(self, migration_id: str, state: str, message: str, **changes: object) -> None:
        self.book.update(migration_id, state=state, message=message, **changes)


def _replace(options: MigrationOptions, **changes: int) -> MigrationOptions:
    return dataclasses.replace(options, **changes)  # type: ignore[arg-type]
