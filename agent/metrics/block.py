"""Storage metrics of a VM from libvirt's block.<i>.* stats (times: nanoseconds → seconds).

The ``drive`` label is the disk's target device (``vda``), which is what KubeVirt reports
for a disk without a user alias; the agent gives disks none.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from agent.metrics.families import Series, Spec, number
from agent.metrics.ports import StatValue

__all__ = ["SPECS", "drives", "series"]

_NS = 1e-9


def _counter(name: str, help: str) -> Spec:
    return Spec(f"kubevirt_vmi_storage_{name}_total", "counter", help, ("drive",))


_TABLE = (
    (_counter("iops_read", "Total number of I/O read operations."), "rd.reqs", 1.0),
    (_counter("iops_write", "Total number of I/O write operations."), "wr.reqs", 1.0),
    (_counter("read_traffic_bytes", "Total number of bytes read from storage."), "rd.bytes", 1.0),
    (
        _counter("write_traffic_bytes", "Total number of written bytes."),
        "wr.bytes",
        1.0,
    ),
    (_counter("read_times_seconds", "Total time spent on read operations."), "rd.times", _NS),
    (_counter("write_times_seconds", "Total time spent on write operations."), "wr.times", _NS),
    (_counter("flush_requests", "Total storage flush requests."), "fl.reqs", 1.0),
    (_counter("flush_times_seconds", "Total time spent on cache flushing."), "fl.times", _NS),
)
SPECS = tuple(spec for spec, _, _ in _TABLE)


def drives(stats: Mapping[str, StatValue]) -> tuple[tuple[int, str], ...]:
    """(index in the record, ``drive`` label) of each disk that has a target name."""
    found = ((index, str(stats.get(f"block.{index}.name", ""))) for index in _count(stats))
    return tuple((index, drive) for index, drive in found if drive)


def _count(stats: Mapping[str, StatValue]) -> range:
    return range(int(number(stats, "block.count") or 0))


def series(disks: tuple[tuple[int, str], ...]) -> Iterator[Series]:
    for index, drive in disks:
        for spec, key, scale in _TABLE:
            yield spec, (drive,), f"block.{index}.{key}", scale, ""
