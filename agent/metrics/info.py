"""Per-VM info metric (KubeVirt's ``kubevirt_vmi_info``) for every VM the agent has.

KubeVirt takes ``os``, ``workload`` and ``flavor`` from template annotations and the guest
agent; the agent receives neither, so they are ``<none>`` as KubeVirt writes them when
unknown. No label is ever copied from the VM's user labels.
"""

from __future__ import annotations

from agent.metrics.families import Families, Spec
from agent.metrics.ports import VMView

__all__ = ["SPECS", "collect"]

NONE = "<none>"

INFO = Spec(
    "kubevirt_vmi_info",
    "gauge",
    "Information about VirtualMachineInstances (always 1): phase, OS and machine type.",
    ("phase", "os", "workload", "flavor", "machine_type"),
)
SPECS = (INFO,)


def collect(families: Families, vm: VMView) -> None:
    families.vm(INFO, vm, 1.0, vm.phase, vm.os or NONE, NONE, NONE, vm.machine_type or NONE)
