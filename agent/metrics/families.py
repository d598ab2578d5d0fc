"""Metric specs (name, type, help, labels) and the families of one scrape built from them.

Every VM series carries KubeVirt's ``node``, ``namespace`` and ``name`` labels, taken from
the VM's identity; a spec adds the few extra labels KubeVirt has (``interface``, ``drive``,
``id``). Families are built afresh on every scrape, so a deleted VM's series are simply
absent from the next one.

Samples are rendered to exposition lines as they arrive, with each VM's label set escaped
once. A domain's stats-record series come as ``Step``s (built once per domain identity and
layout by ``agent/metrics/plan.py``, and shared by scrapes) whose ``name{labels} `` prefix
is ready: a sample then costs one stat lookup, one float spelling (none for a counter that
has not moved: the step's ``Memo``) and one append (bench/bench_metrics.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

from agent.metrics.ports import StatValue, VMView

__all__ = [
    "NODE_LABELS",
    "VMI_LABELS",
    "Families",
    "Memo",
    "Series",
    "Spec",
    "Step",
    "go_float",
    "number",
]

VMI_LABELS = ("node", "namespace", "name")
NODE_LABELS = ("node",)


# eq=False: specs are module constants, and hashing them by identity keeps the per-sample
# family lookup cheap (a field-wise dataclass hash costs more than the rest of the sample).
@dataclass(frozen=True, slots=True, eq=False)
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


# One series of a domain's stats record: spec, extra label values, stat key, scale, and the
# key of a stat to subtract first ("" for none: only memory_used has one).
Series = tuple[Spec, tuple[str, ...], str, float, str]
# The same with its exposition prefix ("name{labels} ") rendered for one VM.
Step = tuple[Spec, str, str, float, str]
# Per step: the last integer stat rendered and its line ((None, "") before the first).
Memo = tuple[int | None, str]


def go_float(value: float) -> str:
    """prometheus_client's floatToGoString (Go's spelling of a sample value), with the work
    that function repeats per call (float(), three comparisons) done only when needed."""
    text = repr(value)
    dot = text.find(".")
    if dot < 0:  # inf, nan, or an exponent without a dot (1e+16)
        return floatToGoString(value)  # type: ignore[no-untyped-call,no-any-return]
    if dot > 6 and value > 0:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


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
        lines.append(f"{spec.name}{{{labels}}} {go_float(value)}\n")

    def vm_labels(self, vm: VMView) -> str:
        """``node="..",namespace="..",name=".."`` of ``vm``, escaped."""
        labels = self._vm_labels.get(vm.domain)
        if labels is None:
            labels = self._vm_labels[vm.domain] = (
                f'{self._node_labels},namespace="{_escape(vm.namespace)}",name="{_escape(vm.name)}"'
            )
        return labels

    def vm(self, spec: Spec, vm: VMView, value: float, *extra: str) -> None:
        self._add(spec, self.vm_labels(vm), extra, value)

    def steps(self, vm: VMView, series: list[Series]) -> tuple[Step, ...]:
        """``series`` of ``vm`` with their exposition prefixes rendered."""
        labels = self.vm_labels(vm)
        steps: list[Step] = []
        for spec, extra, key, scale, minus in series:
            text = labels
            for name, value in zip(spec.labels, extra, strict=True):
                text += f',{name}="{_escape(value)}"'
            steps.append((spec, f"{spec.name}{{{text}}} ", key, scale, minus))
        return tuple(steps)

    def record(
        self, steps: tuple[Step, ...], stats: Mapping[str, StatValue], memo: list[Memo]
    ) -> None:
        """One sample per step whose stat is a number (absent, text or bool: no sample).
        ``memo`` holds, per step, the last integer stat seen and its line: a counter that has
        not moved since the previous scrape (most of an idle guest's) is not spelled again."""
        lines_of, get = self._lines, stats.get
        for index, (spec, prefix, key, scale, minus) in enumerate(steps):
            value = get(key)
            if value.__class__ is int and not minus:
                seen = memo[index]  # one tuple: concurrent scrapes never see half an update
                if value == seen[0]:
                    line = seen[1]
                else:
                    line = f"{prefix}{go_float(value * scale)}\n"
                    memo[index] = (value, line)
            else:
                found = _value(value, stats, key, minus)
                if found is None:
                    continue
                line = f"{prefix}{go_float(found * scale)}\n"
            lines = lines_of.get(spec)
            if lines is None:
                lines = lines_of[spec] = []
            lines.append(line)

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


def _value(
    value: StatValue | None, stats: Mapping[str, StatValue], key: str, minus: str
) -> float | None:
    """A step's value off the common path: a float stat, a derived one, or none at all."""
    if value is None:  # absent: normal (no balloon driver, a skipped group)
        return None
    found = value if value.__class__ is float else number(stats, key)
    if found is None or not minus:
        return found
    other = number(stats, minus)
    return None if other is None else float(found) - other


def number(stats: Mapping[str, StatValue], key: str) -> float | None:
    """The stat as a number, or None when libvirt did not report it (absence is normal:
    a guest without a balloon driver, a group skipped because the domain was busy)."""
    value = stats.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
