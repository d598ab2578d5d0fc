"""start_metrics: the metrics server of a running agent, built from its settings."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

import agent.metrics.agent_metrics as agent_metrics
from agent.config import ConfigError, Settings
from agent.domain.vmcache import VMRecord
from agent.errors import AgentError
from agent.metrics.bounded import BoundedStats
from agent.metrics.collector import AgentCollector, VMCollector, vm_view
from agent.metrics.exposition import Endpoint
from agent.metrics.http import MetricsServer, server_ssl_context
from agent.metrics.ports import DomainStatsSource, NodeFacts, VMView
from agent.ports import (
    DomainEvent,
    HostProbe,
    HypervisorEvents,
    HypervisorVersions,
    JobSample,
)

__all__ = ["StatsHypervisor", "build_endpoint", "start_metrics"]

log = logging.getLogger(__name__)


class StatsHypervisor(DomainStatsSource, HypervisorEvents, HypervisorVersions, Protocol):
    """The hypervisor as the metrics use it: bulk stats, versions, connection events."""


class VMSource(Protocol):
    def records(self) -> list[VMRecord]: ...


class VMNode(Protocol):
    """The VM service as the metrics read it: its VM cache and virtualization type."""

    @property
    def cache(self) -> VMSource: ...
    @property
    def virt_type(self) -> str: ...


class Readiness(Protocol):
    """The agent's readiness, the same the gRPC health service reports."""

    @property
    def ready(self) -> bool: ...


def build_endpoint(
    stats: BoundedStats,
    vms: Callable[[], Iterable[VMView]],
    node_facts: Callable[[], NodeFacts],
    migrating: Callable[[], Iterable[tuple[str, JobSample]]] = lambda: (),
) -> Endpoint:
    """What /metrics serves: VM and node metrics, virt_agent_*, and the process's own."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(AgentCollector())
    ProcessCollector(registry=registry)
    return Endpoint(VMCollector(stats, vms, node_facts, migrating), registry)


class _LibvirtLink:
    """A hypervisor listener: connection state, reconnects, and the versions once known."""

    def __init__(self, versions: HypervisorVersions) -> None:
        self.versions = versions

    def on_connection(self, connected: bool) -> None:
        agent_metrics.libvirt_connection(connected)
        if connected:
            with contextlib.suppress(AgentError):
                agent_metrics.set_build_info(*self.versions.versions())

    def on_domain_event(self, event: DomainEvent) -> None:
        pass


def start_metrics(
    settings: Settings,
    hv: StatsHypervisor,
    node: VMNode,
    host: HostProbe,
    readiness: Readiness,
    migrating: Callable[[], Iterable[tuple[str, JobSample]]] = lambda: (),
) -> Callable[[], None]:
    """Serve /metrics, /healthz and /readyz on ``--metrics-listen`` (when set); returns the
    function that stops serving. ``migrating`` gives the job stats of outgoing migrations."""
    hv.subscribe(_LibvirtLink(hv))
    if not settings.metrics_listen:
        return lambda: None

    def node_facts() -> NodeFacts:
        facts = host.facts()
        return NodeFacts(
            name=settings.node_name,
            cpus=facts.cpus,
            memory_bytes=facts.memory_bytes,
            reserved_memory_bytes=settings.reserved_memory,
            virt_type=node.virt_type,
        )

    try:
        context = None
        if settings.tls_cert and not settings.metrics_insecure:
            context = server_ssl_context(
                settings.tls_cert, settings.tls_key, settings.tls_client_ca
            )
        server = MetricsServer(
            build_endpoint(
                BoundedStats(hv),
                lambda: map(vm_view, node.cache.records()),
                node_facts,
                migrating,
            ),
            settings.metrics_listen,
            ready=lambda: readiness.ready,
            ssl_context=context,
        )
    except OSError as exc:  # the port is taken, the address is not this node's, a bad key
        raise ConfigError(
            f"metrics-listen: cannot serve on {settings.metrics_listen}: {exc}"
        ) from None
    server.start()
    return server.stop
