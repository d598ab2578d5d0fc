"""CPU metrics of a VM from libvirt's cpu.* and vcpu.* stats (nanoseconds → seconds)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from agent.metrics.families import Series, Spec, number
from agent.metrics.ports import StatValue

__all__ = ["SPECS", "series", "vcpu_states"]

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


def vcpu_states(stats: Mapping[str, StatValue]) -> tuple[str, ...]:
    """The ``state`` label of each vCPU the record has, by index."""
    count = int(number(stats, "vcpu.maximum") or number(stats, "vcpu.current") or 0)
    return tuple(
        _VCPU_STATES.get(int(number(stats, f"vcpu.{index}.state") or 0), "offline")
        for index in range(count)
    )


def series(states: tuple[str, ...]) -> Iterator[Series]:
    for spec, key in ((USAGE, "cpu.time"), (USER, "cpu.user"), (SYSTEM, "cpu.system")):
        yield spec, (), key, _NS, ""
    for index, state in enumerate(states):
        prefix = f"vcpu.{index}."
        yield VCPU_SECONDS, (str(index), state), prefix + "time", _NS, ""
        for spec, key in ((VCPU_WAIT, "wait"), (VCPU_DELAY, "delay")):
            yield spec, (str(index),), prefix + key, _NS, ""
