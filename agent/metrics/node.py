"""Node metrics: CPU and memory capacity and allocatable, VMs by phase, virtualization type.

KubeVirt counts VMs by phase at cluster level (``kubevirt_vmi_phase_count`` from
virt-controller); the agent exports its node's count as ``virt_agent_node_vms`` (a gauge
named ``*_count`` is refused by ``promtool check metrics``), and deploy/prometheus-rules.yaml
records ``kubevirt_vmi_phase_count`` from it.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.metrics.families import Families, Spec
from agent.metrics.ports import NodeFacts, VMView

__all__ = ["PHASES", "SPECS", "collect"]

# Every phase is exported, zeros included, so a phase's series does not vanish when empty.
PHASES = ("pending", "stopped", "running", "paused", "succeeded", "failed", "migrating", "unknown")

CAPACITY = Spec(
    "virt_agent_node_capacity",
    "gauge",
    "The node's capacity for VMs, by resource (cpu in cores, memory in bytes).",
    ("resource", "unit"),
    per_vm=False,
)
ALLOCATABLE = Spec(
    "virt_agent_node_allocatable",
    "gauge",
    "What VMs may take of the node, by resource (memory: capacity minus --reserved-memory).",
    ("resource", "unit"),
    per_vm=False,
)
VMS = Spec(
    "virt_agent_node_vms",
    "gauge",
    "VMs the agent has on this node, by phase (lower case, as KubeVirt spells phases).",
    ("phase",),
    per_vm=False,
)
VIRT_TYPE = Spec(
    "virt_agent_node_virtualization_info",
    "gauge",
    "Always 1; virt_type tells how guests run: kvm, or qemu (software emulation, TCG).",
    ("virt_type",),
    per_vm=False,
)
SPECS = (CAPACITY, ALLOCATABLE, VMS, VIRT_TYPE)


def collect(families: Families, facts: NodeFacts, vms: Iterable[VMView]) -> None:
    memory_allocatable = max(0, facts.memory_bytes - facts.reserved_memory_bytes)
    for spec, cpus, memory in (
        (CAPACITY, facts.cpus, facts.memory_bytes),
        (ALLOCATABLE, facts.cpus, memory_allocatable),
    ):
        families.node_sample(spec, float(cpus), "cpu", "core")
        families.node_sample(spec, float(memory), "memory", "byte")
    counts = dict.fromkeys(PHASES, 0)
    for vm in vms:
        counts[vm.phase] = counts.get(vm.phase, 0) + 1
    for phase, count in counts.items():
        families.node_sample(VMS, float(count), phase)
    families.node_sample(VIRT_TYPE, 1.0, facts.virt_type)
