"""``vmctl top`` arithmetic: per-VM CPU %, memory and network rates from two /metrics scrapes.

Pure: scrape text in, rows out. The rates come from the same counters Prometheus stores
(``kubevirt_vmi_cpu_usage_seconds_total``, ``kubevirt_vmi_network_*_bytes_total``), so
``vmctl top`` and a dashboard agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["TopRow", "Usage", "parse_usage", "top_rows"]

_CPU = "kubevirt_vmi_cpu_usage_seconds_total"
_MEMORY = "kubevirt_vmi_memory_resident_bytes"
_RX = "kubevirt_vmi_network_receive_bytes_total"
_TX = "kubevirt_vmi_network_transmit_bytes_total"


@dataclass
class Usage:
    """One VM's counters in one scrape (network summed over its interfaces)."""

    phase: str = ""
    cpu_seconds: float | None = None
    memory_bytes: float | None = None
    rx_bytes: float = 0.0
    tx_bytes: float = 0.0


@dataclass(frozen=True)
class TopRow:
    namespace: str
    name: str
    phase: str
    cpu_percent: float | None  # of one host CPU; None without two CPU readings
    memory_bytes: float | None
    rx_per_second: float | None
    tx_per_second: float | None


@dataclass
class _Scrape:
    usage: dict[tuple[str, str], Usage] = field(default_factory=dict)

    def of(self, labels: dict[str, str]) -> Usage:
        key = (labels.get("namespace", ""), labels.get("name", ""))
        return self.usage.setdefault(key, Usage())


def parse_usage(text: str) -> dict[tuple[str, str], Usage]:
    """(namespace, name) → Usage for every VM in a Prometheus text scrape."""
    scrape = _Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kubevirt_vmi_info":
                scrape.of(sample.labels).phase = sample.labels.get("phase", "")
            elif sample.name == _CPU:
                scrape.of(sample.labels).cpu_seconds = sample.value
            elif sample.name == _MEMORY:
                scrape.of(sample.labels).memory_bytes = sample.value
            elif sample.name == _RX:
                scrape.of(sample.labels).rx_bytes += sample.value
            elif sample.name == _TX:
                scrape.of(sample.labels).tx_bytes += sample.value
    return scrape.usage


def _rate(before: float | None, after: float | None, seconds: float) -> float | None:
    if before is None or after is None or after < before or seconds <= 0:
        return None  # missing, or a counter reset (the guest restarted)
    return (after - before) / seconds


def top_rows(
    before: dict[tuple[str, str], Usage], after: dict[tuple[str, str], Usage], seconds: float
) -> list[TopRow]:
    """Rows for the VMs of the second scrape, busiest CPU first."""
    rows = []
    for (namespace, name), now in after.items():
        then = before.get((namespace, name), Usage())
        cpu = _rate(then.cpu_seconds, now.cpu_seconds, seconds)
        rows.append(
            TopRow(
                namespace=namespace,
                name=name,
                phase=now.phase,
                cpu_percent=None if cpu is None else cpu * 100,
                memory_bytes=now.memory_bytes,
                rx_per_second=_rate(then.rx_bytes, now.rx_bytes, seconds),
                tx_per_second=_rate(then.tx_bytes, now.tx_bytes, seconds),
            )
        )
    return sorted(rows, key=lambda r: (-(r.cpu_percent or 0.0), r.namespace, r.name))
