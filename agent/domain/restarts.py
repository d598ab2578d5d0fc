"""When a stopped VM is started again by its run strategy, and how long to wait first."""

from __future__ import annotations

from agent.domain.status import ACTIVE_PHASES
from agent.domain.vmcache import VMRecord
from agent.models import Phase, RunStrategy

__all__ = ["STARTED_ON_CREATE", "CrashBackoff", "should_restart"]

# The run strategies whose VMs the agent starts as soon as they are created.
STARTED_ON_CREATE = (RunStrategy.ALWAYS, RunStrategy.RERUN_ON_FAILURE, RunStrategy.ONCE)


def should_restart(record: VMRecord, *, detail: str = "") -> bool:
    """Always restarts any stop it did not ask for; RerunOnFailure only a failure; Once none.

    A VM stopped on purpose (Stop verb, Halted) is ``halted`` and stays down; ``detail`` is
    libvirt's reason from the stop event, if any.
    """
    if record.books.halted or record.status.phase in ACTIVE_PHASES:
        return False
    if not record.books.started_at:
        # Created but never started (the agent stopped between define and start): both
        # strategies that start a VM on creation start it now (Once too: it has not run yet).
        return record.spec.run_strategy in STARTED_ON_CREATE
    if record.spec.run_strategy == RunStrategy.ALWAYS:
        return True
    failed = record.status.phase == Phase.FAILED or detail in ("crashed", "failed")
    return record.spec.run_strategy == RunStrategy.RERUN_ON_FAILURE and failed


class CrashBackoff:
    """Delays between automatic restarts: 0 s, then 1, 2, 4 … 60 s while a VM keeps crashing.

    A VM that stayed up for ``settle`` seconds starts over at 0 (the clock is injected).
    """

    def __init__(self, *, settle: float = 60.0, cap: float = 60.0) -> None:
        self._delays: dict[str, float] = {}
        self._settle = settle
        self._cap = cap

    def next_delay(self, domain: str, *, started_at: float, now: float) -> float:
        if now - started_at >= self._settle:
            self._delays.pop(domain, None)
        delay = self._delays.get(domain, 0.0)
        self._delays[domain] = min(max(delay * 2, 1.0), self._cap)
        return delay

    def forget(self, domain: str) -> None:
        self._delays.pop(domain, None)
