"""Run-strategy restarts: which stopped VMs start again, and the crash-loop backoff."""

from __future__ import annotations

import pytest

from agent.domain.restarts import CrashBackoff, should_restart
from agent.domain.vmcache import VMRecord
from agent.models import Bookkeeping, Phase, RunStrategy, VMSpec, VMStatus


def record(
    strategy: RunStrategy, phase: Phase, *, halted: bool = False, started: bool = True
) -> VMRecord:
    spec = VMSpec(namespace="ns", name="vm", uid="u", run_strategy=strategy)
    books = Bookkeeping(
        generation=1, created_at=1.0, started_at=2.0 if started else 0.0, halted=halted
    )
    return VMRecord(spec=spec, books=books, status=VMStatus(phase=phase))


@pytest.mark.parametrize(
    ("vm", "detail", "expected"),
    [
        (record(RunStrategy.ALWAYS, Phase.SUCCEEDED), "shutdown", True),
        (record(RunStrategy.ALWAYS, Phase.FAILED), "crashed", True),
        (record(RunStrategy.ALWAYS, Phase.SUCCEEDED, halted=True), "shutdown", False),
        (record(RunStrategy.ALWAYS, Phase.RUNNING), "", False),
        (record(RunStrategy.ALWAYS, Phase.STOPPED, started=False), "", True),
        (record(RunStrategy.MANUAL, Phase.STOPPED, started=False), "", False),
        (record(RunStrategy.RERUN_ON_FAILURE, Phase.FAILED), "", True),
        (record(RunStrategy.RERUN_ON_FAILURE, Phase.STOPPED), "failed", True),
        (record(RunStrategy.RERUN_ON_FAILURE, Phase.SUCCEEDED), "shutdown", False),
        (record(RunStrategy.MANUAL, Phase.FAILED), "crashed", False),
        (record(RunStrategy.HALTED, Phase.FAILED), "crashed", False),
    ],
    ids=[
        "always-after-shutdown",
        "always-after-crash",
        "always-but-stopped-by-user",
        "still-running",
        "always-never-started",
        "manual-never-started",
        "rerun-failed",
        "rerun-failed-event",
        "rerun-clean-shutdown",
        "manual",
        "halted",
    ],
)
def test_should_restart(vm: VMRecord, detail: str, expected: bool) -> None:
    assert should_restart(vm, detail=detail) is expected


def test_backoff_doubles_while_crashing_and_resets_after_a_good_run() -> None:
    backoff = CrashBackoff(settle=60, cap=8)
    delays = [backoff.next_delay("d", started_at=100.0, now=101.0) for _ in range(6)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff.next_delay("d", started_at=100.0, now=200.0) == 0.0  # it ran for 100 s
    assert backoff.next_delay("other", started_at=0.0, now=1.0) == 0.0
