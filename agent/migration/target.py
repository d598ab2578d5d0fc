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
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.domain.lifecycle import VMService
from agent.domain.metadata import metadata_payload, parse_metadata
from agent.errors import Conflict, FailedPrecondition, InvalidSpec, ResourceExhausted, Unavailable
from agent.migration import admission
from agent.migration.ports import PreparedTarget
from agent.migration.records import TARGET, MigrationBook, MigrationRecord, State
from agent.models import Bookkeeping, VMSpec
from agent.naming import domain_name, vm_key
from agent.ports import DomainState, HostProbe, JobSample, Migrator

__all__ = ["IncomingMigrations"]

log = logging.getLogger(__name__)

_MIGRATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # (names a file)
_ARRIVED = (DomainState.RUNNING, DomainState.BLOCKED, DomainState.PAUSED)
_CLEANUP_RETRY_SECONDS = 2.0
_CLEANUP_PATIENCE_SECONDS = 600.0
_FOLLOW_SECONDS = 2.0
_ARRIVAL_PATIENCE_SECONDS = 600.0
# After a restart, an incoming migration whose domain is not here: the source either has not
# started libvirt's job (it fails on the missing tap and the guest stays there) or it ended.
_RECOVERED_PATIENCE_SECONDS = 60.0
_PREPARING_WAIT_SECONDS = 600.0  # a repeated prepare (or a finish) waits this long for it


@dataclass(frozen=True, slots=True)
class _Incoming:
    domain: str
    spec: VMSpec
    books: Bookkeeping
    answer: PreparedTarget
    patience: float = field(default=_ARRIVAL_PATIENCE_SECONDS)


@dataclass(frozen=True, slots=True)
class _Preparing:
    """A prepare under way (its slot taken): a repeated call with its id waits for it."""

    domain: str
    spec: VMSpec
    done: threading.Event = field(default_factory=threading.Event)


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
        tls: bool = False,
        post_copy_unsupported: Callable[[], str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.migrator = migrator
        self.book = book
        self.address = address
        self.enabled = enabled
        self.host = host
        self.reserved_memory = reserved_memory
        self.tls = tls  # libvirtd's TLS listener and QEMU's TLS for the stream
        self.post_copy_unsupported = post_copy_unsupported
        self._slots = threading.BoundedSemaphore(max_inbound)
        self._max_inbound = max_inbound
        self._clock = clock
        self._lock = threading.Lock()
        self._incoming: dict[str, _Incoming | _Preparing] = {}
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
        validate_only: bool = False,
        post_copy: bool = False,
        digests: Mapping[str, str] | None = None,
    ) -> PreparedTarget:
        """Ready this node for the VM (a repeated call answers again). ``vm``: what the
        caller was authorised for (metadata of another VM is refused); ``validate_only``:
        check, make nothing; ``digests``: containerDisk volume → the source's manifest."""
        if migration_id in self._incoming:
            return self._answer(migration_id)
        spec, books = self._check(migration_id, metadata_xml, source_node, vm, post_copy)
        if validate_only:
            return PreparedTarget("", "", self.node_name, "")
        domain = domain_name(spec.namespace, spec.name)
        placeholder = _Preparing(domain, spec)
        if not self._take_slot(migration_id, placeholder):
            return self._answer(migration_id)  # a repeated call: the first one's answer
        self.book.add(
            MigrationRecord(
                id=migration_id, namespace=spec.namespace, name=spec.name, uid=spec.uid,
                role=TARGET, state=State.PREPARING, source_node=source_node,
                target_node=self.node_name, started_at=self._clock(),
            )
        )  # fmt: skip
        try:
            incoming = self._make_ready(migration_id, domain, spec, books, digests or {})
        except Exception as exc:
            with self._lock:
                del self._incoming[migration_id]
            self._slots.release()
            self.book.update(migration_id, state=State.FAILED, message=f"prepare: {exc}")
            placeholder.done.set()
            raise
        metadata = metadata_payload(incoming.spec, incoming.books)  # (kept for a restart)
        self.book.update(migration_id, state=State.RUNNING, metadata_xml=metadata)
        self._track(migration_id, incoming)
        placeholder.done.set()
        return incoming.answer

    def _take_slot(self, migration_id: str, placeholder: _Preparing) -> bool:
        """Take a slot and hold ``migration_id``'s place; False when a call with that id
        holds it already (one slot and one follower per id, however often it is asked)."""
        with self._lock:
            if migration_id in self._incoming:
                return False
            if not self._slots.acquire(blocking=False):
                raise ResourceExhausted(
                    f"node {self.node_name} takes {self._max_inbound} incoming migrations at "
                    "once; retry later"
                )
            self._incoming[migration_id] = placeholder
            return True

    def _answer(self, migration_id: str) -> PreparedTarget:
        """The answer of a prepare made or under way (a repeated call waits for it)."""
        with self._lock:
            known = self._incoming.get(migration_id)
        if isinstance(known, _Preparing):
            known.done.wait(_PREPARING_WAIT_SECONDS)
            known = self._ready(migration_id)
        if known is None:
            raise Conflict(
                f"migration {migration_id}: the target's preparation failed or ended meanwhile"
            )
        return known.answer

    def _ready(self, migration_id: str) -> _Incoming | None:
        with self._lock:
            known = self._incoming.get(migration_id)
        return known if isinstance(known, _Incoming) else None

    def recover(self, record: MigrationRecord) -> None:
        """Follow an incoming migration a previous agent process left (from its stored
        record): adopt the guest once it runs here, or remove the preparations once its
        domain is gone. Called before the first resync, which then leaves its files alone."""
        try:
            spec, books = parse_metadata(record.metadata_xml)
        except Exception as exc:  # prepared before its metadata was stored: nothing to follow
            self.book.update(record.id, state=State.FAILED, message=f"agent restarted: {exc}")
            return
        self._slots.acquire(blocking=False)  # (released at the end; over the limit is fine)
        answer = PreparedTarget("", "", self.node_name, "")
        incoming = _Incoming(record.domain, spec, books, answer, _RECOVERED_PATIENCE_SECONDS)
        self.service.steps.migrating.add(record.domain)
        self._track(record.id, incoming)
        log.info("following incoming migration %s of %s after a restart", record.id, spec.key)

    def _track(self, migration_id: str, incoming: _Incoming) -> None:
        with self._lock:
            self._incoming[migration_id] = incoming
        threading.Thread(
            target=self._follow,
            args=(migration_id,),
            name=f"incoming-{incoming.domain}",
            daemon=True,
        ).start()

    def _check(
        self,
        migration_id: str,
        metadata_xml: str,
        source_node: str,
        vm: tuple[str, str],
        post_copy: bool,
    ) -> tuple[VMSpec, Bookkeeping]:
        if not self.enabled:
            raise FailedPrecondition(f"node {self.node_name} runs with --no-migration")
        if not _MIGRATION_ID.fullmatch(migration_id):
            raise InvalidSpec(
                "migration_id", "must be 1-64 letters, digits, '.', '_' or '-' (a UUID)"
            )
        spec, books = admission.check_request(self.service, metadata_xml, source_node, vm)
        with self._lock:  # prepared (or being prepared) here, not arrived yet
            incoming = [
                (i.domain, i.spec.memory_bytes)
                for key, i in self._incoming.items()
                if key != migration_id
            ]
        admission.check_memory(self.service, self.host, self.reserved_memory, spec, incoming)
        admission.check_host_disks(self.service, spec)
        admission.check_claims(self.service, spec)
        admission.check_post_copy(self.node_name, self.post_copy_unsupported, post_copy)
        return spec, books

    def finish(self, migration_id: str, *, succeeded: bool, message: str) -> tuple[int, JobSample]:
        """Adopt the VM (it arrived) or remove what prepare made; returns the downtime (ms)
        and libvirt's final statistics."""
        with self._lock:
            preparing = self._incoming.get(migration_id)
        if isinstance(preparing, _Preparing):  # (the source gave up waiting for prepare)
            preparing.done.wait(_PREPARING_WAIT_SECONDS)
        with self._lock:
            incoming = self._incoming.get(migration_id)
            if isinstance(incoming, _Preparing):
                raise Unavailable(f"migration {migration_id} is still being prepared; retry")
            self._incoming.pop(migration_id, None)
        if incoming is None:  # finished before (a retried call, or it followed on its own)
            done = self.book.get(migration_id)  # NotFound for an id never seen
            return done.downtime_ms, done.progress
        try:
            return self._finish(migration_id, incoming, succeeded=succeeded, message=message)
        finally:
            self.service.steps.migrating.discard(incoming.domain)
            with contextlib.suppress(ValueError):  # (one recovered beyond the limit)
                self._slots.release()

    def _follow(self, migration_id: str) -> None:
        """End the migration on this side if the source does not (its agent died): adopt the
        guest once it runs here, clean up once its half-received domain is gone, or when no
        domain came at all within the patience."""
        seen = False
        first = self._ready(migration_id)
        patience = min(self.arrival_patience, first.patience if first else 0.0)
        deadline = time.monotonic() + patience
        while True:
            time.sleep(self.follow_interval)
            incoming = self._ready(migration_id)
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

    def _make_ready(
        self,
        migration_id: str,
        domain: str,
        spec: VMSpec,
        books: Bookkeeping,
        digests: Mapping[str, str],
    ) -> _Incoming:
        service = self.service
        books = dataclasses.replace(books, node_name=self.node_name)
        books = dataclasses.replace(
            books, network=service.network.adopt(domain, spec, books.network)
        )
        service.steps.migrating.add(domain)
        try:
            definition = service.steps.definition(domain, spec, books, pins=digests)
            service.network.plug(domain, spec, books.network)
        except Exception:
            service.steps.migrating.discard(domain)
            self._remove(domain, spec, books)
            raise
        scheme = "qemu+tls" if self.tls else "qemu+tcp"
        answer = PreparedTarget(
            libvirt_uri=f"{scheme}://{self.address}/system",
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
