"""Network metrics of a VM from libvirt's net.<i>.* stats (the guest's view: rx is what the
guest received). The ``interface`` label is the spec's interface name (the tap name for a
NIC the agent does not know)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from agent.metrics.families import Series, Spec, number
from agent.metrics.ports import StatValue, VMView

__all__ = ["SPECS", "interfaces", "series"]

_WHAT = (
    ("bytes", "bytes", "Total network traffic {} bytes."),
    ("packets", "pkts", "Total network traffic {} packets."),
    ("errors", "errs", "Total network {} errors."),
    ("packets_dropped", "drop", "The total number of {} packets dropped on vNIC interfaces."),
)


def _specs(direction: str, word: str) -> list[tuple[Spec, str]]:
    return [
        (
            Spec(
                f"kubevirt_vmi_network_{direction}_{what}_total",
                "counter",
                help.format(word),
                ("interface",),
            ),
            key,
        )
        for what, key, help in _WHAT
    ]


_BY_KEY = {"rx": _specs("receive", "received"), "tx": _specs("transmit", "transmitted")}
TRAFFIC = Spec(
    "kubevirt_vmi_network_traffic_bytes_total",
    "counter",
    "Total number of bytes sent and received (deprecated in KubeVirt; type is rx or tx).",
    ("interface", "type"),
)
SPECS = (*(spec for pairs in _BY_KEY.values() for spec, _ in pairs), TRAFFIC)


def interfaces(vm: VMView, stats: Mapping[str, StatValue]) -> tuple[tuple[int, str], ...]:
    """(index in the record, ``interface`` label) of each NIC that has a tap name."""
    found = []
    for index in range(int(number(stats, "net.count") or 0)):
        tap = str(stats.get(f"net.{index}.name", ""))
        if tap:
            found.append((index, vm.nic_names.get(tap, tap)))
    return tuple(found)


def series(nics: tuple[tuple[int, str], ...]) -> Iterator[Series]:
    for index, interface in nics:
        for direction, pairs in _BY_KEY.items():
            prefix = f"net.{index}.{direction}."
            for spec, key in pairs:
                yield spec, (interface,), prefix + key, 1.0, ""
            yield TRAFFIC, (interface, direction), prefix + "bytes", 1.0, ""
