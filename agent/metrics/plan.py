"""Plans: per domain, the ready-to-render steps of its stats record (stat key, scale and the
``name{labels} `` prefix of every series), built once and reused for as long as the domain's
identity and layout (vCPU states, NIC and disk names) stay the same.

A scrape then only reads values, and through each plan's memo re-spells only the integer
counters that moved since the previous scrape. The layout is read from each record, so a
hot-plugged disk, a renamed interface or a vCPU changing state gets a new plan on the next
scrape; plans of domains a scrape did not see are dropped with it.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping

from agent.metrics import block, cpu, memory, network
from agent.metrics.families import Families, Memo, Series, Step
from agent.metrics.ports import StatValue, VMView

__all__ = ["Plans"]

Plan = tuple[tuple[Step, ...], list[Memo]]

_MEMORY: list[Series] = list(memory.series())


class Plans:
    """The plans of the domains of the latest scrape, by identity and layout."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: dict[Hashable, Plan] = {}

    def begin(self) -> _Scrape:
        """The plans one scrape uses; ``_Scrape.end()`` keeps them (and only them)."""
        with self._lock:
            return _Scrape(self, self._plans)

    def _keep(self, plans: dict[Hashable, Plan]) -> None:
        with self._lock:
            self._plans = plans


class _Scrape:
    def __init__(self, owner: Plans, known: dict[Hashable, Plan]) -> None:
        self._owner = owner
        self._known = known
        self._used: dict[Hashable, Plan] = {}

    def record(self, families: Families, vm: VMView, stats: Mapping[str, StatValue]) -> None:
        """The samples of one domain's record, into ``families``."""
        states = cpu.vcpu_states(stats)
        nics = network.interfaces(vm, stats)
        disks = block.drives(stats)
        key = (families.vm_labels(vm), states, nics, disks)
        plan = self._used.get(key) or self._known.get(key)
        if plan is None:
            series = [*cpu.series(states), *_MEMORY, *network.series(nics), *block.series(disks)]
            steps = families.steps(vm, series)
            plan = steps, [(None, "")] * len(steps)
        self._used[key] = plan
        families.record(plan[0], stats, plan[1])

    def end(self) -> None:
        self._owner._keep(self._used)
