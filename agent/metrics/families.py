"""Metric specs (name, type, help, labels) and the families of one scrape built from them.

Every VM series carries KubeVirt's ``node``, ``namespace`` and ``name`` labels, taken from
the VM's identity; a spec adds the few extra labels KubeVirt has (``interface``, ``drive``,
``id``). Families are built afresh on every scrape (concurrent scrapes share nothing), so a
deleted VM's series are simply absent from the next one.

Samples are rendered to exposition lines as they arrive, with each VM's label set escaped
once: a node's tens of thousands of VM samples cost a few microseconds each instead of the
general-purpose encoder's tens (bench/bench_metrics.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

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

    def header(self, openmetrics: bool) -> str:
        # OpenMetrics names a counter family without its _total; the text format with it.
        family = self.name.removesuffix("_total") if openmetrics else self.name
        text = self.help.replace("\\", r"\\").replace("\n", r"\n")
        return f"# HELP {family} {text}\n# TYPE {family} {self.kind}\n"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Families:
    """The samples of one scrape, grouped by metric, as exposition lines."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._node_labels = f'node="{_escape(node)}"'
        self._vm_labels: dict[str, str] = {}
        self._lines: dict[Spec, list[str]] = {}

    def _add(self, spec: Spec, labels: str, extra: tuple[str, ...], value: float) -> None:
        for name, text in zip(spec.labels, extra, strict=True):
            labels += f',{name}="{_escape(text)}"'
        lines = self._lines.get(spec)
        if lines is None:
            lines = self._lines[spec] = []
        lines.append(f"{spec.name}{{{labels}}} {floatToGoString(value)}\n")  # type: ignore[no-untyped-call]

    def vm(self, spec: Spec, vm: VMView, value: float, *extra: str) -> None:
        labels = self._vm_labels.get(vm.domain)
        if labels is None:
            labels = self._vm_labels[vm.domain] = (
                f'{self._node_labels},namespace="{_escape(vm.namespace)}",name="{_escape(vm.name)}"'
            )
        self._add(spec, labels, extra, value)

    def node_sample(self, spec: Spec, value: float, *extra: str) -> None:
        self._add(spec, self._node_labels, extra, value)

    def samples(self) -> dict[str, int]:
        """Metric name → number of samples (what tests and benchmarks look at)."""
        return {spec.name: len(lines) for spec, lines in self._lines.items()}

    def render(self, *, openmetrics: bool = False) -> str:
        """The exposition text of every family (no ``# EOF``: the caller ends the body)."""
        parts: list[str] = []
        for spec, lines in self._lines.items():
            parts.append(spec.header(openmetrics))
            parts.extend(lines)
        return "".join(parts)


def number(stats: Mapping[str, StatValue], key: str) -> float | None:
    """The stat as a number, or None when libvirt did not report it (absence is normal:
    a guest without a balloon driver, a group skipped because the domain was busy)."""
    value = stats.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
