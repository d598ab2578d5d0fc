"""CPU metrics of a VM from libvirt's cpu.* and vcpu.* stats (nanoseconds → seconds)."""

from __future__ import annotations

from collections.abc import Mapping

from agent.metrics.families import Families, Spec, number
from agent.metrics.ports import StatValue, VMView

__all__ = ["SPECS", "collect"]

_NS = 1e-9
# libvirt's virVcpuState.
_VCPU_STATES = {0: "offline", 1: "running", 2: "blocked"}

USAGE = Spec(
    "kubevirt_vmi_cpu_usage_seconds_total",
    "counter",
    "Total CPU time spent in all modes (sum of both vcpu and hypervisor usage).",
)
USER = Spec(
    "kubevirt_vmi_cpu_user_usage_seconds_total", "counter", "Total CPU time spent in user mode."
)
SYSTEM = Spec(
    "kubevirt_vmi_cpu_system_usage_seconds_total", "counter", "Total CPU time spent in system mode."
)
VCPU_SECONDS = Spec(
    "kubevirt_vmi_vcpu_seconds_total",
    "counter",
    "Total amount of time spent in each state by each vcpu (cpu_time excluding hypervisor time).",
    ("id", "state"),
)
VCPU_WAIT = Spec(
    "kubevirt_vmi_vcpu_wait_seconds_total",
    "counter",
    "Amount of time spent by each vcpu while waiting on I/O.",
    ("id",),
)
VCPU_DELAY = Spec(
    "kubevirt_vmi_vcpu_delay_seconds_total",
    "counter",
    "Amount of time spent by each vcpu waiting in the queue instead of running.",
    ("id",),
)
SPECS = (USAGE, USER, SYSTEM, VCPU_SECONDS, VCPU_WAIT, VCPU_DELAY)


def collect(families: Families, vm: VMView, stats: Mapping[str, StatValue]) -> None:
    for spec, key in ((USAGE, "cpu.time"), (USER, "cpu.user"), (SYSTEM, "cpu.system")):
        value = number(stats, key)
        if value is not None:
            families.vm(spec, vm, value * _NS)
    for index in range(int(number(stats, "vcpu.maximum") or number(stats, "vcpu.current") or 0)):
        prefix = f"vcpu.{index}."
        state = _VCPU_STATES.get(int(number(stats, prefix + "state") or 0), "offline")
        seconds = number(stats, prefix + "time")
        if seconds is not None:
            families.vm(VCPU_SECONDS, vm, seconds * _NS, str(index), state)
        for spec, key in ((VCPU_WAIT, "wait"), (VCPU_DELAY, "delay")):
            value = number(stats, prefix + key)
            if value is not None:
                families.vm(spec, vm, value * _NS, str(index))
