"""Ports: the small interfaces the core needs from the outside world.

Adapters in ``agent.adapters`` implement them with real libraries; tests use fakes or
libvirt's ``test:///default`` driver. Nothing crossing a port is a library type.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agent.models import InterfaceStatus, NicBacking, VMAllocation, VMSpec

__all__ = [
    "Clock",
    "JobSample",
    "MigrationJob",
    "Migrator",
    "DomainEvent",
    "DomainInfo",
    "DomainCatalog",
    "DomainPower",
    "DomainState",
    "HostFacts",
    "HostProbe",
    "ImageInfo",
    "ImageTool",
    "NetworkRepair",
    "VMNetwork",
    "Hypervisor",
    "HypervisorLink",
    "HypervisorEvents",
    "HypervisorListener",
    "HypervisorVersions",
]


class DomainState(enum.StrEnum):
    """libvirt's domain states, by name."""

    NOSTATE = "nostate"
    RUNNING = "running"
    BLOCKED = "blocked"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"  # being shut down
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    PMSUSPENDED = "pmsuspended"


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """One libvirt domain as the core sees it.

    ``config_xml`` is the persistent definition (the latest spec); ``live_xml`` is the
    running definition (the spec the guest was started with), empty when it is not running.
    ``reason`` is libvirt's state reason in lower case ("crashed", "destroyed", "user", ...).
    """

    name: str
    uuid: str
    state: DomainState
    reason: str
    config_xml: str
    live_xml: str = ""
    pid: int = 0


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """A lifecycle event from the hypervisor, e.g. ("stopped", "crashed")."""

    name: str
    event: str
    detail: str


class DomainCatalog(Protocol):
    """Stores domain definitions: libvirt is the agent's database."""

    def lookup(self, name: str) -> DomainInfo | None: ...
    def list_domains(self) -> list[DomainInfo]: ...
    def define(self, xml: str) -> None: ...
    def undefine(self, name: str) -> None: ...
    def set_metadata(self, name: str, element_xml: str, *, live: bool) -> None: ...


class DomainPower(Protocol):
    """Runs, pauses and stops defined domains."""

    def start(self, name: str, *, paused: bool = False) -> None: ...
    def shutdown(self, name: str) -> None: ...
    def destroy(self, name: str) -> None: ...
    def suspend(self, name: str) -> None: ...
    def resume(self, name: str) -> None: ...
    def reboot(self, name: str) -> None: ...


class HypervisorListener(Protocol):
    """Receives the hypervisor's feed, in order, on one thread."""

    def on_connection(self, connected: bool) -> None: ...
    def on_domain_event(self, event: DomainEvent) -> None: ...


class HypervisorLink(Protocol):
    """Whether the connection is up (the VM service retries its resync only while it is)."""

    def connected(self) -> bool: ...


class Hypervisor(DomainCatalog, DomainPower, HypervisorLink, Protocol):
    """Everything the VM service needs from the hypervisor.

    Usage::

        hv.define(xml)
        hv.start(name, paused=True)
        hv.resume(name)
        hv.shutdown(name)   # ACPI power button
        hv.destroy(name)
    """


class HypervisorEvents(Protocol):
    """The hypervisor's feed; the app subscribes the VM service to it."""

    def subscribe(self, listener: HypervisorListener) -> None: ...


class HypervisorVersions(Protocol):
    """The node's virtualization stack, for NodeService: (libvirt, QEMU) version strings."""

    def versions(self) -> tuple[str, str]: ...


class Clock(Protocol):
    """Time as the VM lifecycle reads it, injected so tests run grace periods instantly.

    ``now`` is wall time in Unix seconds (stored in bookkeeping), ``monotonic`` measures
    durations, ``sleep`` waits, and ``wait`` blocks on a held condition until it is notified
    or ``seconds`` pass on this clock (spurious wake-ups allowed: callers re-check).
    """

    def now(self) -> float: ...
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...
    def wait(self, condition: threading.Condition, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What a scheduler needs to know about the node."""

    hostname: str
    cpus: int
    memory_bytes: int
    cpu_model: str


class HostProbe(Protocol):
    """Reads facts about the node."""

    def facts(self) -> HostFacts: ...


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What an image file says about itself (``qemu-img info``); empty when it says nothing."""

    format: str
    backing_file: str = ""
    data_file: str = ""


class ImageTool(Protocol):
    """Inspects and creates disk image files."""

    def inspect(self, path: str) -> ImageInfo: ...
    def create_overlay(self, base: str, base_format: str, path: str) -> None: ...
    def create_blank(self, path: str, size_bytes: int, fmt: str = "qcow2") -> None: ...


@dataclass(frozen=True, slots=True)
class NetworkRepair:
    """One thing a resync found changed behind the agent's back and put back."""

    kind: str  # nft_table, tap, link, address, route, neighbour, sysctl, dhcp
    domain: str  # the VM it belongs to; "" for the node's own (the nft table, forwarding)
    what: str  # the object: a tap's name, a route's address, a sysctl's key


class VMNetwork(Protocol):
    """Plugs VMs into the node's network: addresses, taps, NAT, DHCP.

    ``allocate`` decides what a VM holds (addresses, MACs, tap names, node ports), keeping
    what ``previous`` held (both stay reserved); the caller stores the result in the VM's
    bookkeeping, so a restarted agent hands nothing out twice, then calls ``settle`` with
    the allocation the bookkeeping holds now (the new one, or ``previous`` when storing
    failed). Every other method reads that allocation and is idempotent.
    ``adopt`` does the same for a VM migrating in, keeping what it had on its source.
    """

    def allocate(
        self, domain: str, spec: VMSpec, previous: VMAllocation | None
    ) -> VMAllocation | None: ...
    def adopt(
        self, domain: str, spec: VMSpec, incoming: VMAllocation | None
    ) -> VMAllocation | None: ...
    def settle(self, domain: str, allocation: VMAllocation | None) -> None: ...
    def nics(
        self, domain: str, spec: VMSpec, allocation: VMAllocation | None
    ) -> tuple[NicBacking, ...]: ...
    def plug(self, domain: str, spec: VMSpec, allocation: VMAllocation | None) -> None: ...
    def unplug(self, domain: str, spec: VMSpec, allocation: VMAllocation | None) -> None: ...
    def interfaces(
        self, domain: str, spec: VMSpec, allocation: VMAllocation | None
    ) -> tuple[InterfaceStatus, ...]: ...
    def reconcile(
        self, vms: dict[str, tuple[VMSpec, VMAllocation | None, bool]]
    ) -> tuple[NetworkRepair, ...]: ...
    def repair(self, running: Collection[str]) -> tuple[NetworkRepair, ...]:
        """Measure the plumbing of the ``running`` VMs (and the node's), put back what is
        off; nothing is written when all is in place."""
        ...

    def cut_off(self, domain: str) -> str:
        """Why the running VM's NICs no longer reach the node ("" when they do)."""
        ...


@dataclass(frozen=True, slots=True)
class JobSample:
    """One reading of libvirt's job stats (``virDomainGetJobStats``), bytes and ms."""

    elapsed_ms: int = 0
    data_total: int = 0
    data_processed: int = 0
    data_remaining: int = 0
    memory_total: int = 0
    memory_processed: int = 0
    memory_remaining: int = 0
    memory_iteration: int = 0
    dirty_rate: int = 0  # pages/s
    memory_bps: int = 0
    disk_total: int = 0
    disk_processed: int = 0
    disk_remaining: int = 0
    page_size: int = 4096
    post_copy: bool = False  # the job is in its post-copy phase


@dataclass(frozen=True, slots=True)
class MigrationJob:
    """What ``Migrator.migrate`` needs besides the domain name."""

    libvirt_uri: str  # the target's libvirtd (peer-to-peer: the source's libvirtd dials it)
    migration_uri: str  # where the migration stream goes (tcp://ADDRESS)
    dest_xml: str  # the live definition on the target (its paths, its metadata)
    persist_xml: str  # the persistent definition on the target
    bandwidth_mib: int = 0
    parallel_connections: int = 1
    auto_converge: bool = False
    post_copy: bool = False
    copy_disks: tuple[str, ...] = ()  # target devs (vda...) copied by incremental storage copy
    shared_disks: bool = False  # host disks on storage both nodes share (libvirt cannot tell)
    tls: bool = False  # the migration stream over TLS (libvirt's VIR_MIGRATE_TLS)


class Migrator(Protocol):
    """The hypervisor's side of a live migration (libvirt's ``migrateToURI3`` and friends)."""

    def migratable_xml(self, name: str) -> tuple[str, str]:
        """(live, persistent) definitions of a running domain, as a target may receive them."""
        ...

    def migrate(self, name: str, job: MigrationJob) -> None:
        """Run the migration to its end (blocking); raises FailedPrecondition on failure."""
        ...

    def job_stats(self, name: str) -> JobSample | None:
        """The running job's statistics; None when there is no job (yet, or any more: the
        domain is gone or not running). A transient failure to read it raises."""
        ...

    def completed(self, name: str) -> tuple[int, JobSample]:
        """The last completed migration of a domain: the guest's pause at the switch-over
        (ms, 0: unknown) and its final statistics."""
        ...

    def abort(self, name: str) -> None: ...
    def set_max_downtime(self, name: str, milliseconds: int) -> None: ...
    def set_max_speed(self, name: str, mib_per_second: int) -> None: ...
    def start_post_copy(self, name: str) -> None: ...
