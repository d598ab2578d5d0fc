"""Plans: per domain, the ready-to-render steps of its stats record (stat key, scale and the
``name{labels} `` prefix of every series), built once and reused for as long as the domain's
identity and layout (vCPU states, NIC and disk names) stay the same.

A scrape then only reads values. The layout is read from each record, so a hot-plugged
disk, a renamed interface or a vCPU changing state gets a new plan on the next scrape; plans
of domains a scrape did not see are dropped with it.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping

from agent.metrics import block, cpu, memory, network
from agent.metrics.families import Families, Series, Step
from agent.metrics.ports import StatValue, VMView

__all__ = ["Plans"]

_MEMORY: list[Series] = list(memory.series())


class Plans:
    """The plans of the domains of the latest scrape, by identity and layout."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: dict[Hashable, tuple[Step, ...]] = {}

    def begin(self) -> _Scrape:
        """The plans one scrape uses; ``_Scrape.end()`` keeps them (and only them)."""
        with self._lock:
            return _Scrape(self, self._plans)

    def _keep(self, plans: dict[Hashable, tuple[Step, ...]]) -> None:
        with self._lock:
            self._plans = plans


class _Scrape:
    def __init__(self, owner: Plans, known: dict[Hashable, tuple[Step, ...]]) -> None:
        self._owner = owner
        self._known = known
        self._used: dict[Hashable, tuple[Step, ...]] = {}

    def record(self, families: Families, vm: VMView, stats: Mapping[str, StatValue]) -> None:
        """The samples of one domain's record, into ``families``."""
        states = cpu.vcpu_states(stats)
        nics = network.interfaces(vm, stats)
        disks = block.drives(stats)
        key = (families.vm_labels(vm), states, nics, disks)
        steps = self._used.get(key) or self._known.get(key)
        if steps is None:
            series = [*cpu.series(states), *_MEMORY, *network.series(nics), *block.series(disks)]
            steps = families.steps(vm, series)
        self._used[key] = steps
        families.record(steps, stats)

    def end(self) -> None:
        self._owner._keep(self._used)
