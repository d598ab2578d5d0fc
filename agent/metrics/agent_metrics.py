"""The agent's own ``virt_agent_*`` metrics: one registry, and tiny hooks the agent calls.

Only this package imports prometheus_client; the gRPC interceptor, the VM service, the image
puller, nftables and DHCP call the functions below. Label values are bounded: gRPC method
names, status code names, verbs and outcomes from fixed sets, never VM names or user input.

Migrations: ``virt_agent_migrations_total{role,outcome}`` and their duration, counted by
``agent.migration.records`` when a migration ends on either side.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent import __version__

__all__ = [
    "REGISTRY",
    "dhcp_lease",
    "grpc_call",
    "image_pull",
    "libvirt_connection",
    "migration_ended",
    "nft_transaction",
    "operation",
    "resync_kinds",
    "resync_repaired",
    "scrape_finished",
    "scrape_missed",
    "set_build_info",
]

# KubeVirt's Go exporters have no *_created series; without this every counter gets one.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_PULL_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600)
_SCRAPE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)

GRPC_REQUESTS = Counter(
    "virt_agent_grpc_requests",
    "gRPC calls handled, by full method name and status code.",
    ["method", "code"],
    registry=REGISTRY,
)
GRPC_LATENCY = Histogram(
    "virt_agent_grpc_request_duration_seconds",
    "Time from receiving a gRPC call to its status (streams: until the stream ends).",
    ["method"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
OPERATIONS = Counter(
    "virt_agent_operations",
    "VM operations run under a VM's lock, by verb and outcome (success, conflict, failed).",
    ["verb", "outcome"],
    registry=REGISTRY,
)
IMAGE_PULLS = Counter(
    "virt_agent_image_pulls",
    "Container disk pulls from a registry, by outcome (success, failed).",
    ["outcome"],
    registry=REGISTRY,
)
IMAGE_PULL_BYTES = Counter(
    "virt_agent_image_pull_bytes",
    "Bytes of container disk layers downloaded by successful pulls.",
    registry=REGISTRY,
)
IMAGE_PULL_SECONDS = Histogram(
    "virt_agent_image_pull_duration_seconds",
    "Duration of container disk pulls, by outcome.",
    ["outcome"],
    buckets=_PULL_BUCKETS,
    registry=REGISTRY,
)
MIGRATIONS = Counter(
    "virt_agent_migrations",
    "Live migrations that ended, by role (source, target) and outcome (succeeded, failed, "
    "cancelled).",
    ["role", "outcome"],
    registry=REGISTRY,
)
MIGRATION_SECONDS = Histogram(
    "virt_agent_migration_duration_seconds",
    "Duration of live migrations from request to end, by role and outcome.",
    ["role", "outcome"],
    buckets=_PULL_BUCKETS,
    registry=REGISTRY,
)
NFT_TRANSACTIONS = Counter(
    "virt_agent_nft_transactions",
    "nftables transactions sent by the agent, by outcome (success, failed).",
    ["outcome"],
    registry=REGISTRY,
)
DHCP_LEASES = Counter(
    "virt_agent_dhcp_leases",
    "DHCP leases handed out (ACKs with an address) by the agent's DHCP server.",
    registry=REGISTRY,
)
LIBVIRT_CONNECTED = Gauge(
    "virt_agent_libvirt_connected",
    "1 while the agent's libvirt connection is up, else 0.",
    registry=REGISTRY,
)
LIBVIRT_RECONNECTS = Counter(
    "virt_agent_libvirt_reconnects",
    "Times the libvirt connection was re-established after being lost.",
    registry=REGISTRY,
)
SCRAPE_SECONDS = Histogram(
    "virt_agent_scrape_duration_seconds",
    "Time to collect the VM metrics of one scrape (the bulk libvirt stats call included).",
    buckets=_SCRAPE_BUCKETS,
    registry=REGISTRY,
)
SCRAPE_MISSES = Counter(
    "virt_agent_scrape_misses",
    "libvirt stats calls a scrape gave up on or could not make, by reason "
    "(timeout, unavailable, error); the scrape then served what it had.",
    ["reason"],
    registry=REGISTRY,
)
RESYNC_REPAIRS = Counter(
    "virt_agent_resync_repairs",
    "Things the resync found changed behind the agent's back and put back, by kind "
    "(nft_table, tap, link, address, route, neighbour, sysctl, dhcp).",
    ["kind"],
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "virt_agent_build_info",
    "Always 1; the labels tell the agent's version and its Python and libvirt versions.",
    ["version", "python_version", "libvirt_version", "qemu_version"],
    registry=REGISTRY,
)
LIBVIRT_CONNECTED.set(0)


def grpc_call(method: str, code: str, seconds: float) -> None:
    GRPC_REQUESTS.labels(method, code).inc()
    GRPC_LATENCY.labels(method).observe(seconds)


@contextlib.contextmanager
def operation(verb: str, *, conflict: type[BaseException] | None = None) -> Iterator[None]:
    """Count the block as one ``verb``: success, conflict (exception of type ``conflict``)
    or failed (any other exception, re-raised)."""
    try:
        yield
    except BaseException as exc:
        outcome = "conflict" if conflict is not None and isinstance(exc, conflict) else "failed"
        OPERATIONS.labels(verb, outcome).inc()
        raise
    OPERATIONS.labels(verb, "success").inc()


@contextlib.contextmanager
def image_pull(total_bytes: int) -> Iterator[None]:
    """Time and count one pull of ``total_bytes``; an exception counts it as failed."""
    started = time.monotonic()
    outcome = "failed"
    try:
        yield
        outcome = "success"
        IMAGE_PULL_BYTES.inc(total_bytes)
    finally:
        IMAGE_PULLS.labels(outcome).inc()
        IMAGE_PULL_SECONDS.labels(outcome).observe(time.monotonic() - started)


def nft_transaction(ok: bool) -> None:
    NFT_TRANSACTIONS.labels("success" if ok else "failed").inc()


def resync_repaired(kind: str) -> None:
    RESYNC_REPAIRS.labels(kind).inc()


def resync_kinds(kinds: tuple[str, ...]) -> None:
    """Show every kind from the start, at 0 (a rate or alert needs the series to exist)."""
    for kind in kinds:
        RESYNC_REPAIRS.labels(kind)


def dhcp_lease() -> None:
    DHCP_LEASES.inc()


def migration_ended(role: str, outcome: str, seconds: float) -> None:
    """One migration ended: ``role`` source/target, ``outcome`` succeeded/failed/cancelled."""
    MIGRATIONS.labels(role, outcome).inc()
    MIGRATION_SECONDS.labels(role, outcome).observe(max(0.0, seconds))


class _LibvirtLink:
    """Connection state from the hypervisor's connection callbacks."""

    def __init__(self) -> None:
        self.connections = 0

    def __call__(self, connected: bool) -> None:
        if connected:
            if self.connections:
                LIBVIRT_RECONNECTS.inc()
            self.connections += 1
        LIBVIRT_CONNECTED.set(1 if connected else 0)


libvirt_connection = _LibvirtLink()


def scrape_finished(seconds: float) -> None:
    SCRAPE_SECONDS.observe(seconds)


def scrape_missed(reason: str) -> None:
    SCRAPE_MISSES.labels(reason).inc()


def set_build_info(libvirt_version: str = "", qemu_version: str = "") -> None:
    BUILD_INFO.clear()
    BUILD_INFO.labels(__version__, platform.python_version(), libvirt_version, qemu_version).set(1)


set_build_info()  # libvirt and QEMU versions are filled in once libvirt is connected
