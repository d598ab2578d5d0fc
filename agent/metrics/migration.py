"""Migration metrics of a VM while it migrates away (KubeVirt's kubevirt_vmi_migration_*),
from the job stats the migration monitor reads; absent when no migration runs."""

from __future__ import annotations

from agent.metrics.families import Families, Spec
from agent.metrics.ports import VMView
from agent.ports import JobSample

__all__ = ["SPECS", "collect"]

DATA_TOTAL = Spec(
    "kubevirt_vmi_migration_data_total_bytes",
    "gauge",
    "The total Guest OS data to be migrated to the new VM.",
)
DATA_PROCESSED = Spec(
    "kubevirt_vmi_migration_data_processed_bytes",
    "gauge",
    "The total Guest OS data processed and migrated to the new VM.",
)
DATA_REMAINING = Spec(
    "kubevirt_vmi_migration_data_remaining_bytes",
    "gauge",
    "The remaining guest OS data to be migrated to the new VM.",
)
DIRTY_RATE = Spec(
    "kubevirt_vmi_migration_dirty_memory_rate_bytes",
    "gauge",
    "The rate of memory being dirty in the Guest OS.",
)
TRANSFER_RATE = Spec(
    "kubevirt_vmi_migration_memory_transfer_rate_bytes",
    "gauge",
    "The rate at which the memory is being transferred.",
)
SPECS = (DATA_TOTAL, DATA_PROCESSED, DATA_REMAINING, DIRTY_RATE, TRANSFER_RATE)


def collect(families: Families, vm: VMView, job: JobSample) -> None:
    families.vm(DATA_TOTAL, vm, float(job.data_total))
    families.vm(DATA_PROCESSED, vm, float(job.data_processed))
    families.vm(DATA_REMAINING, vm, float(job.data_remaining))
    # libvirt counts dirtied memory in pages per second.
    families.vm(DIRTY_RATE, vm, float(job.dirty_rate * job.page_size))
    families.vm(TRANSFER_RATE, vm, float(job.memory_bps))
