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

from agent.domain.lifecycle import VMService
from agent.domain.metadata import metadata_payload
from agent.errors import (
    AgentError,
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    ResourceExhausted,
)
from agent.migration import xml as migration_xml
from agent.migration.monitor import Control, clean_source, watch_job
from agent.migration.policy import MigrationOptions, Policy
from agent.migration.ports import MigrationTarget, PreparedTarget, TargetAgents
from agent.migration.precheck import ask_target, check_vm
from agent.migration.records import SOURCE, MigrationBook, MigrationRecord, State
from agent.migration.resume import resume_outgoing
from agent.models import Bookkeeping, VMSpec
from agent.naming import domain_name, vm_key
from agent.ports import JobSample, MigrationJob, Migrator

__all__ = ["OutgoingMigrations"]

log = logging.getLogger(__name__)


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
        tls: bool = False,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.migrator = migrator
        self.agents = agents
        self.book = book
        self.enabled = enabled
        self.tls = tls  # the migration stream over TLS (also when the target asks for it)
        self._slots = threading.Semaphore(max_outbound)
        self.poll_interval = poll_interval
        self._clock = clock
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._controls: dict[str, Control] = {}
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
        """Validate, have the target check it can take the VM, and start; returns with the
        record (Pending). Whatever is refused (here or by the target) changes nothing."""
        with self._lock:
            if request_id in self._requests:
                return self.book.get(self._requests[request_id])
        if not self.enabled:
            raise FailedPrecondition(f"node {self.service.node_name} runs with --no-migration")
        check_vm(self.service, self.book, namespace, name, target_agent, options)
        migration_id = str(uuid.uuid4())
        vm = (namespace, name)
        target_node = ask_target(self.service, self.agents, migration_id, vm, target_agent, options)
        with self._lock:
            if request_id in self._requests:
                return self.book.get(self._requests[request_id])
            record = self._new_record(migration_id, namespace, name, target_agent, options)
            record = self.book.update(record.id, target_node=target_node)
            self._controls[record.id] = Control()
            if request_id:
                self._requests[request_id] = record.id
        # daemon: libvirtd carries a migration on without the agent, whose exit must not wait
        threading.Thread(
            target=self._run, args=(record.id,), name=f"migrate-{name}", daemon=True
        ).start()
        return record

    def follow(self, record: MigrationRecord) -> None:
        """Take over a migration a previous agent process started (its stored record)."""
        control = Control()
        with self._lock:
            self._controls[record.id] = control
        threading.Thread(
            target=self._resume, args=(record, control), name=f"resume-{record.name}", daemon=True
        ).start()

    def _resume(self, record: MigrationRecord, control: Control) -> None:
        try:
            resume_outgoing(self, record, control)
        except Exception as exc:
            log.exception("following migration %s after a restart", record.id)
            self._end(record.id, State.FAILED, f"following it after a restart: {exc}")
        finally:
            with self._lock:
                self._controls.pop(record.id, None)

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
            elif max_downtime_ms is not None:  # followed after a restart: no policy steps
                self.migrator.set_max_downtime(record.domain, max_downtime_ms)
        return self.book.update(migration_id, options=options)

    # -- the flow -------------------------------------------------------------------------

    def _new_record(
        self,
        migration_id: str,
        namespace: str,
        name: str,
        target_agent: str,
        options: MigrationOptions,
    ) -> MigrationRecord:
        domain = domain_name(namespace, name)
        active = self.book.active_for(domain, SOURCE)  # (one may have started meanwhile)
        if active is not None:
            raise AlreadyExists(f"vm {vm_key(domain)} is already migrating: migration {active.id}")
        _, spec, books = self.service.steps.require(domain)
        return self.book.add(
            MigrationRecord(
                id=migration_id, namespace=namespace, name=name, uid=spec.uid,
                role=SOURCE, state=State.PENDING, source_node=self.service.node_name,
                target_agent=target_agent, started_at=self._clock(), options=options,
                metadata_xml=metadata_payload(spec, books),
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

    def _hold_and_migrate(self, migration_id: str, control: Control) -> None:
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

    def _migrate(self, migration_id: str, control: Control) -> None:
        record = self.book.update(migration_id, state=State.PREPARING)
        domain = record.domain
        _, spec, books = self.service.steps.require(domain)
        live_xml, persistent_xml = self.migrator.migratable_xml(domain)
        target = self.agents.connect(record.target_agent)
        try:
            digests = self.service.files.container_digests(spec, domain)
            prepared = self._prepare_target(target, record, spec, books, digests, control)
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
                tls=self.tls or prepared.libvirt_uri.startswith("qemu+tls:"),
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
        spec: VMSpec,
        books: Bookkeeping,
        digests: dict[str, str],
        control: Control,
    ) -> PreparedTarget:
        """The target's answer; while it is busy with other incoming migrations, Pending."""
        delay = 1.0
        metadata = metadata_payload(spec, books)
        while True:
            try:
                return target.prepare(
                    record.id, record.namespace, record.name, metadata, spec.memory_bytes,
                    post_copy=record.options.post_copy, digests=digests,
                )  # fmt: skip
            except ResourceExhausted as exc:
                self.book.update(record.id, state=State.PENDING, message=str(exc))
                if control.cancelled.wait(delay):
                    raise Conflict("cancelled while waiting for the target") from exc
                delay = min(delay * 2, 10.0)
                self.book.update(record.id, state=State.PREPARING, message="")

    def _run_job(self, migration_id: str, control: Control, job: MigrationJob, size: int) -> str:
        """Migrate with the monitor running; returns "" on success, else why it failed."""
        domain = self.book.get(migration_id).domain
        if control.cancelled.is_set():
            return "cancelled before it started"
        control.policy = Policy(self.book.get(migration_id).options, size, self.monotonic)
        self.book.update(migration_id, state=State.RUNNING)
        done = threading.Event()
        monitor = threading.Thread(
            target=watch_job,
            args=(self.book, self.migrator, migration_id, control, done, self.poll_interval),
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

    def _post_copy_failed(self, domain: str, control: Control) -> bool:
        """Whether the job failed after the switch to post-copy (the guest's memory is
        split between the nodes: neither copy can run on)."""
        if control.post_copy:
            return True
        with contextlib.suppress(AgentError):
            info = self.service.hv.lookup(domain)
            return info is not None and info.reason == "postcopy_failed"
        return False

    def _conclude(
        self,
        migration_id: str,
        control: Control,
        target: MigrationTarget,
        error: str,
        vm: tuple[VMSpec, Bookkeeping],
    ) -> None:
        record = self.book.get(migration_id)
        if error and self._post_copy_failed(record.domain, control):
            error = (
                f"post-copy failed: {error}; the guest's memory is split between "
                f"{record.source_node} and {record.target_node}, it cannot run on: vm failed"
            )
            log.error("migration %s of %s: %s", migration_id, record.domain, error)
            with contextlib.suppress(Exception):
                self.service.steps.refresh(record.domain)  # (phase Failed, PostCopyFailed)
        if error:
            log.warning("migration %s of %s failed: %s", migration_id, record.domain, error)
            self._tell_target(target, migration_id, succeeded=False, message=error)
            state = State.CANCELLED if control.cancelled.is_set() else State.FAILED
            self._end(migration_id, state, "cancelled" if state == State.CANCELLED else error)
            return
        downtime, final = self._tell_target(target, migration_id, succeeded=True, message="")
        clean_source(self.service, record.domain, *vm)
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

    def _end(self, migration_id: str, state: str, message: str, **changes: object) -> None:
        self.book.update(migration_id, state=state, message=message, **changes)


def _replace(options: MigrationOptions, **changes: int) -> MigrationOptions:
    return dataclasses.replace(options, **changes)  # type: ignore[arg-type]
