"""The target side of a live migration: prepare the node for an incoming VM, then adopt it
or remove every trace of it.

Prepare holds the VM's address, MAC and tap in the node's ledger and plumbs them (the tap
must exist before QEMU opens it), creates its files (container disk overlays on the same
image, empty disks for the storage copy to fill, the cloud-init seed rebuilt from the spec)
and answers the domain definition with this node's paths. When the domain arrives, libvirt's
events put it into the VM cache (its metadata carries spec and books); ``finish`` confirms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.disks.hostdisk import host_disk_path
from agent.domain.lifecycle import VMService
from agent.domain.metadata import CorruptMetadata, parse_metadata
from agent.domain.status import ACTIVE_PHASES
from agent.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidSpec,
    ResourceExhausted,
    Unavailable,
)
from agent.migration.ports import PreparedTarget
from agent.migration.records import TARGET, MigrationBook, MigrationRecord, State
from agent.models import Bookkeeping, HostDisk, VMSpec
from agent.naming import domain_name, vm_key
from agent.ports import DomainState, HostProbe, JobSample, Migrator

__all__ = ["IncomingMigrations"]

log = logging.getLogger(__name__)

_ARRIVED = (DomainState.RUNNING, DomainState.BLOCKED, DomainState.PAUSED)
_CLEANUP_RETRY_SECONDS = 2.0
_CLEANUP_PATIENCE_SECONDS = 600.0
_FOLLOW_SECONDS = 2.0
_ARRIVAL_PATIENCE_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class _Incoming:
    domain: str
    spec: VMSpec
    books: Bookkeeping
    answer: PreparedTarget


class IncomingMigrations:
    """Migrations arriving on this node, at most ``max_inbound`` at once."""

    def __init__(
        self,
        service: VMService,
        migrator: Migrator,
        book: MigrationBook,
        *,
        address: str,
        max_inbound: int = 2,
        enabled: bool = True,
        host: HostProbe | None = None,
        reserved_memory: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.migrator = migrator
        self.book = book
        self.address = address
        self.enabled = enabled
        self.host = host
        self.reserved_memory = reserved_memory
        self._slots = threading.BoundedSemaphore(max_inbound)
        self._max_inbound = max_inbound
        self._clock = clock
        self._lock = threading.Lock()
        self._incoming: dict[str, _Incoming] = {}
        self.follow_interval = _FOLLOW_SECONDS
        self.arrival_patience = _ARRIVAL_PATIENCE_SECONDS

    @property
    def node_name(self) -> str:
        return self.service.node_name

    def prepare(
        self,
        migration_id: str,
        metadata_xml: str,
        source_node: str,
        memory_bytes: int,
        *,
        vm: tuple[str, str],
    ) -> PreparedTarget:
        """Ready this node for the VM; a repeated call for the same migration answers again.

        ``vm`` is the (namespace, name) the request names, which is what the caller was
        authorised for: metadata describing any other VM is refused."""
        with self._lock:
            known = self._incoming.get(migration_id)
        if known is not None:
            return known.answer
        spec, books = self._check(migration_id, metadata_xml, source_node, vm)
        self._check_memory(spec)
        self._check_host_disks(spec)
        domain = domain_name(spec.namespace, spec.name)
        if not self._slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"node {self.node_name} takes {self._max_inbound} incoming migrations at once; "
                "retry later"
            )
        self.book.add(
            MigrationRecord(
                id=migration_id, namespace=spec.namespace, name=spec.name, uid=spec.uid,
                role=TARGET, state=State.PREPARING, source_node=source_node,
                target_node=self.node_name, started_at=self._clock(),
            )
        )  # fmt: skip
        try:
            incoming = self._make_ready(migration_id, domain, spec, books)
        except Exception as exc:
            self._slots.release()
            self.book.update(migration_id, state=State.FAILED, message=f"prepare: {exc}")
            raise
        with self._lock:
            self._incoming[migration_id] = incoming
        self.book.update(migration_id, state=State.RUNNING)
        threading.Thread(
            target=self._follow, args=(migration_id,), name=f"incoming-{domain}", daemon=True
        ).start()
        return incoming.answer

    def finish(self, migration_id: str, *, succeeded: bool, message: str) -> tuple[int, JobSample]:
        """Adopt the VM (it arrived) or remove what prepare made; returns the downtime (ms)
        and libvirt's final statistics."""
        with self._lock:
            incoming = self._incoming.pop(migration_id, None)
        if incoming is None:  # finished before (a retried call, or it followed on its own)
            done = self.book.get(migration_id)  # NotFound for an id never seen
            return done.downtime_ms, done.progress
        try:
            return self._finish(migration_id, incoming, succeeded=succeeded, message=message)
        finally:
            self.service.steps.migrating.discard(incoming.domain)
            self._slots.release()

    def _follow(self, migration_id: str) -> None:
        """End the migration on this side if the source does not (its agent died): adopt the
        guest once it runs here, clean up once its half-received domain is gone, or when no
        domain came at all within the patience."""
        seen = False
        deadline = time.monotonic() + self.arrival_patience
        while True:
            time.sleep(self.follow_interval)
            with self._lock:
                incoming = self._incoming.get(migration_id)
            if incoming is None:
                return  # the source told us
            try:
                info = self.service.hv.lookup(incoming.domain)
            except Unavailable:
                continue  # libvirtd is away; it kills a half-received guest when it is back
            if info is not None and info.state in (DomainState.RUNNING, DomainState.BLOCKED):
                self.finish(migration_id, succeeded=True, message="")
                return
            seen = seen or info is not None
            if (seen and info is None) or (not seen and time.monotonic() > deadline):
                why = "went away" if seen else "never came"
                message = f"the incoming domain {why} and the source did not say why"
                self.finish(migration_id, succeeded=False, message=message)
                return

    # -- steps ----------------------------------------------------------------------------

    def _check(
        self, migration_id: str, metadata_xml: str, source_node: str, vm: tuple[str, str]
    ) -> tuple[VMSpec, Bookkeeping]:
        if not self.enabled:
            raise FailedPrecondition(f"node {self.node_name} runs with --no-migration")
        if not migration_id:
            raise InvalidSpec("migration_id", "is required")
        if source_node == self.node_name:
            raise FailedPrecondition(
                f"the target is node {self.node_name}, the VM's own node: pick another node"
            )
        try:
            spec, books = parse_metadata(metadata_xml)
        except (CorruptMetadata, ValueError) as exc:
            raise InvalidSpec("metadata_xml", f"unreadable: {exc}") from exc
        if (spec.namespace, spec.name) != vm:
            raise InvalidSpec(
                "metadata_xml", f"describes vm {spec.key}, not the request's {vm[0]}/{vm[1]}"
            )
        domain = domain_name(spec.namespace, spec.name)
        if self.service.hv.lookup(domain) is not None:
            raise AlreadyExists(f"vm {vm_key(domain)} already exists on node {self.node_name}")
        return spec, books

    def _check_memory(self, spec: VMSpec) -> None:
        """FailedPrecondition unless the node's allocatable memory holds the VM besides the
        VMs it runs (the same allocatable NodeService reports)."""
        if self.host is None:
            return
        allocatable = self.host.facts().memory_bytes - self.reserved_memory
        used = sum(
            r.spec.memory_bytes
            for r in self.service.cache.records()
            if r.status.phase in ACTIVE_PHASES
        )
        if used + spec.memory_bytes > allocatable:
            mib = 1 << 20
            raise FailedPrecondition(
                f"node {self.node_name} cannot take vm {spec.key}: it needs "
                f"{spec.memory_bytes // mib} MiB, {max(0, allocatable - used) // mib} MiB of "
                f"{allocatable // mib} MiB allocatable are free"
            )

    def _check_host_disks(self, spec: VMSpec) -> None:
        """A hostDisk stays where it is: its file must already be here (shared storage),
        never created afresh as DiskOrCreate would."""
        roots = self.service.files.support.host_disk_roots
        for index, volume in enumerate(spec.volumes):
            if not isinstance(volume.source, HostDisk):
                continue
            field = f"spec.template.spec.volumes[{index}].hostDisk.path"
            existing = dataclasses.replace(volume.source, type="Disk")
            try:
                host_disk_path(roots, existing, field)
            except InvalidSpec as exc:
                raise FailedPrecondition(
                    f"{exc} on node {self.node_name}: hostDisk {volume.name!r} migrates only "
                    "on storage both nodes share"
                ) from exc

    def _make_ready(
        self, migration_id: str, domain: str, spec: VMSpec, books: Bookkeeping
    ) -> _Incoming:
        service = self.service
        books = dataclasses.replace(books, node_name=self.node_name)
        books = dataclasses.replace(
            books, network=service.network.adopt(domain, spec, books.network)
        )
        service.steps.migrating.add(domain)
        try:
            definition = service.steps.definition(domain, spec, books)
            service.network.plug(domain, spec, books.network)
        except Exception:
            service.steps.migrating.discard(domain)
            self._remove(domain, spec, books)
            raise
        answer = PreparedTarget(
            libvirt_uri=f"qemu+tcp://{self.address}/system",
            migration_uri=f"tcp://{self.address}",
            node_name=self.node_name,
            domain_xml=definition,
        )
        log.info("ready for incoming vm %s (migration %s)", spec.key, migration_id)
        return _Incoming(domain, spec, books, answer)

    def _finish(
        self, migration_id: str, incoming: _Incoming, *, succeeded: bool, message: str
    ) -> tuple[int, JobSample]:
        domain = incoming.domain
        try:
            info = self.service.hv.lookup(domain)
        except Unavailable:
            if succeeded:
                raise  # the source retries; the guest is not seen here yet
            self.book.update(migration_id, state=State.FAILED, message=message)
            self._clean_when_back(incoming)
            return 0, JobSample()
        arrived = info is not None and info.state in _ARRIVED
        if succeeded and arrived:
            downtime, final = self.migrator.completed(domain)
            self.service.steps.migrating.discard(domain)
            self.service.steps.refresh(domain)
            self.book.update(
                migration_id, state=State.SUCCEEDED, downtime_ms=downtime, progress=final
            )
            log.info("vm %s arrived (migration %s)", vm_key(domain), migration_id)
            return downtime, final
        if info is not None and info.state == DomainState.PAUSED:
            # Still the half-received guest: libvirt removes it; clean up after that.
            self.book.update(migration_id, state=State.FAILED, message=message)
            self._clean_when_back(incoming)
            return 0, JobSample()
        if arrived:
            # The source reports a failure but the guest runs here (libvirt finished after
            # all, or post-copy): keep it; removing it could lose the only copy.
            log.error(
                "migration %s failed (%s) but %s runs here; kept", migration_id, message, domain
            )
            self.service.steps.migrating.discard(domain)
            self.service.steps.refresh(domain)
            self.book.update(migration_id, state=State.FAILED, message=message)
            return 0, JobSample()
        self._remove(domain, incoming.spec, incoming.books)
        if succeeded:
            message = "the source reported success but the VM did not arrive here"
        self.book.update(migration_id, state=State.FAILED, message=message)
        return 0, JobSample()

    def _clean_when_back(self, incoming: _Incoming) -> None:
        """libvirtd is down: once it answers again (and has killed the half-received guest,
        as it does on restart), remove what prepare made; keep a guest that arrived."""

        def run() -> None:
            deadline = time.monotonic() + _CLEANUP_PATIENCE_SECONDS
            while time.monotonic() < deadline:
                time.sleep(_CLEANUP_RETRY_SECONDS)
                try:
                    info = self.service.hv.lookup(incoming.domain)
                except Unavailable:
                    continue
                if info is None:
                    self._remove(incoming.domain, incoming.spec, incoming.books)
                    log.info("removed the preparations of %s", vm_key(incoming.domain))
                    return
                if info.state in (DomainState.RUNNING, DomainState.BLOCKED):
                    self.service.steps.refresh(incoming.domain)  # arrived after all: keep it
                    return
            log.error("gave up cleaning the incoming %s; reconcile removes it", incoming.domain)

        threading.Thread(
            target=run, name=f"incoming-cleanup-{incoming.domain}", daemon=True
        ).start()

    def _remove(self, domain: str, spec: VMSpec, books: Bookkeeping) -> None:
        """Everything prepare made for a VM that did not arrive (no domain is left here)."""
        service = self.service
        with contextlib.suppress(Exception):
            if service.hv.lookup(domain) is not None:
                return  # a domain of that name exists after all: its files are in use
        try:
            service.network.unplug(domain, spec, books.network)
        except Exception:
            log.exception("unplugging the incoming %s failed; reconcile removes it", domain)
        service.files.remove(domain)
        service.cache.remove(domain)
