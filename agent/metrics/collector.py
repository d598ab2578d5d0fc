"""VMCollector: the custom collector behind /metrics: VM, node and agent metrics per scrape.

Per scrape: the VMs from the agent's VM cache (identity, phase), one bounded bulk stats call,
and pure conversions (one module per resource, as KubeVirt's domainstats has). Domains that
are not the agent's VMs (foreign domains, a VM deleted since) are left out.

Migration: ``kubevirt_vmi_migration_*`` (data total/processed/remaining, dirty rate,
transfer rate) come from the job stats the migration monitor last read for each VM that is
migrating away (no libvirt call of their own).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from agent.domain.vmcache import VMRecord
from agent.metrics import agent_metrics, block, cpu, info, memory, migration, network, node
from agent.metrics.bounded import BoundedStats
from agent.metrics.families import Families, Spec
from agent.metrics.plan import Plans
from agent.metrics.ports import NodeFacts, VMView
from agent.naming import domain_name
from agent.ports import JobSample

__all__ = ["VM_SPECS", "AgentCollector", "VMCollector", "exported_names", "vm_view"]

VM_SPECS: tuple[Spec, ...] = (
    *cpu.SPECS,
    *memory.SPECS,
    *network.SPECS,
    *block.SPECS,
    *info.SPECS,
    *node.SPECS,
    *migration.SPECS,
)


def vm_view(record: VMRecord) -> VMView:
    """The identity and phase of one VM cache record."""
    spec, status = record.spec, record.status
    return VMView(
        domain=domain_name(spec.namespace, spec.name),
        namespace=spec.namespace,
        name=spec.name,
        phase=status.phase.value.lower(),
        machine_type=spec.machine_type,
        nic_names={nic.tap_name: nic.name for nic in status.interfaces if nic.tap_name},
    )


class VMCollector:
    """VM and node metric families, built afresh on every collect() from per-domain plans
    kept between scrapes (see plan.py)."""

    def __init__(
        self,
        stats: BoundedStats,
        vms: Callable[[], Iterable[VMView]],
        node_facts: Callable[[], NodeFacts],
        migrating: Callable[[], Iterable[tuple[str, JobSample]]] = lambda: (),
    ) -> None:
        self.stats = stats
        self.vms = vms
        self.node_facts = node_facts
        self.migrating = migrating  # (domain, latest job stats) of outgoing migrations
        self.plans = Plans()

    def collect(self) -> Families:
        started = time.monotonic()
        facts = self.node_facts()
        families = Families(facts.name)
        views = {view.domain: view for view in self.vms()}
        for view in views.values():
            info.collect(families, view)
        node.collect(families, facts, views.values())
        plans = self.plans.begin()
        for record in self.stats.fetch():
            vm = views.get(record.name)
            if vm is not None:
                plans.record(families, vm, record.stats)
        plans.end()
        for domain, job in self.migrating():
            if (vm := views.get(domain)) is not None:
                migration.collect(families, vm, job)
        agent_metrics.scrape_finished(time.monotonic() - started)
        return families


class AgentCollector(Collector):
    """The ``virt_agent_*`` registry, served next to the VM metrics."""

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from agent_metrics.REGISTRY.collect()


def exported_names() -> set[str]:
    """Every series name the agent can expose (the dashboard test checks against it)."""
    names = {spec.name for spec in VM_SPECS}
    for family in agent_metrics.REGISTRY.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names
