"""Metric specs (name, type, help, labels) and the families of one scrape built from them.

Every VM series carries KubeVirt's ``node``, ``namespace`` and ``name`` labels, taken from
the VM's identity; a spec adds the few extra labels KubeVirt has (``interface``, ``drive``,
``id``). Families are built afresh on every scrape (concurrent scrapes share nothing), so a
deleted VM's series are simply absent from the next one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.metrics.ports import StatValue, VMView

__all__ = ["NODE_LABELS", "VMI_LABELS", "Families", "Spec", "number"]

VMI_LABELS = ("node", "namespace", "name")
NODE_LABELS = ("node",)


@dataclass(frozen=True, slots=True)
class Spec:
    """One exported metric: ``name`` as exposed (counters end in ``_total``)."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    labels: tuple[str, ...] = ()  # after node/namespace/name (or after node for node metrics)
    per_vm: bool = True

    def label_names(self) -> list[str]:
        return [*(VMI_LABELS if self.per_vm else NODE_LABELS), *self.labels]


class Families:
    """The metric families of one scrape, created when their first sample arrives."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}

    def _family(self, spec: Spec) -> CounterMetricFamily | GaugeMetricFamily:
        family = self._families.get(spec.name)
        if family is None:
            if spec.kind == "counter":
                family = CounterMetricFamily(spec.name, spec.help, labels=spec.label_names())
            else:
                family = GaugeMetricFamily(spec.name, spec.help, labels=spec.label_names())
            self._families[spec.name] = family
        return family

    def vm(self, spec: Spec, vm: VMView, value: float, *extra: str) -> None:
        self._family(spec).add_metric([self.node, vm.namespace, vm.name, *extra], value)

    def node_sample(self, spec: Spec, value: float, *extra: str) -> None:
        self._family(spec).add_metric([self.node, *extra], value)

    def families(self) -> list[Metric]:
        return list(self._families.values())


def number(stats: Mapping[str, StatValue], key: str) -> float | None:
    """The stat as a number, or None when libvirt did not report it (absence is normal:
    a guest without a balloon driver, a group skipped because the domain was busy)."""
    value = stats.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
