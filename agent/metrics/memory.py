"""Memory metrics of a VM from libvirt's balloon.* stats (KiB → bytes).

Most of them come from the guest's virtio balloon driver; a guest without one (or one that
has not reported yet) has only ``current``, ``maximum`` and ``rss``, and only those are
exported: an absent stat is an absent series, not a zero.
"""

from __future__ import annotations

from collections.abc import Iterator

from agent.metrics.families import Series, Spec

__all__ = ["SPECS", "series"]

_KIB = 1024.0


def _gauge(name: str, help: str) -> Spec:
    return Spec(name, "gauge", help)


RESIDENT = _gauge(
    "kubevirt_vmi_memory_resident_bytes",
    "Resident set size of the process running the domain.",
)
DOMAIN = _gauge(
    "kubevirt_vmi_memory_domain_bytes",
    "The amount of memory in bytes allocated to the domain (its maximum memory).",
)
ACTUAL_BALLOON = _gauge(
    "kubevirt_vmi_memory_actual_balloon_bytes",
    "Current balloon size in bytes.",
)
AVAILABLE = _gauge(
    "kubevirt_vmi_memory_available_bytes",
    "Amount of usable memory as seen by the domain (may differ from the domain's memory).",
)
USABLE = _gauge(
    "kubevirt_vmi_memory_usable_bytes",
    "The amount of memory which can be reclaimed by balloon without pushing the guest "
    "system to swap.",
)
UNUSED = _gauge(
    "kubevirt_vmi_memory_unused_bytes",
    "The amount of memory left completely unused by the system.",
)
CACHED = _gauge(
    "kubevirt_vmi_memory_cached_bytes",
    "The amount of memory that is being used to cache I/O and is available to be reclaimed.",
)
USED = _gauge(
    "kubevirt_vmi_memory_used_bytes",
    "Amount of used memory as seen by the domain (available minus unused).",
)
SWAP_IN = _gauge(
    "kubevirt_vmi_memory_swap_in_traffic_bytes",
    "The total amount of data read from swap space of the guest in bytes.",
)
SWAP_OUT = _gauge(
    "kubevirt_vmi_memory_swap_out_traffic_bytes",
    "The total amount of memory written out to swap space of the guest in bytes.",
)
MAJOR_FAULTS = Spec(
    "kubevirt_vmi_memory_pgmajfault_total",
    "counter",
    "The number of page faults when disk IO was required.",
)
MINOR_FAULTS = Spec(
    "kubevirt_vmi_memory_pgminfault_total",
    "counter",
    "The number of other page faults, when disk IO was not required.",
)
_FROM_KIB = (
    (RESIDENT, "balloon.rss"),
    (DOMAIN, "balloon.maximum"),
    (ACTUAL_BALLOON, "balloon.current"),
    (AVAILABLE, "balloon.available"),
    (USABLE, "balloon.usable"),
    (UNUSED, "balloon.unused"),
    (CACHED, "balloon.disk_caches"),
    (SWAP_IN, "balloon.swap_in"),
    (SWAP_OUT, "balloon.swap_out"),
)
SPECS = (*(spec for spec, _ in _FROM_KIB), USED, MAJOR_FAULTS, MINOR_FAULTS)


def series() -> Iterator[Series]:
    for spec, key in _FROM_KIB:
        yield spec, (), key, _KIB, ""
    yield USED, (), "balloon.available", _KIB, "balloon.unused"  # available minus unused
    yield MAJOR_FAULTS, (), "balloon.major_fault", 1.0, ""
    yield MINOR_FAULTS, (), "balloon.minor_fault", 1.0, ""
