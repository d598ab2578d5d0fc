"""The registry's watches: a consistent snapshot, then every change, or a clear cut-off."""

from __future__ import annotations

import pytest

from agent.models import Phase, RunStrategy
from tests.unit.test_restarts import record


def test_a_watch_that_overflows_is_cut_off_with_an_overflow_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent.domain import registry as registry_module

    monkeypatch.setattr(registry_module, "_WATCH_BUFFER", 3)
    registry = registry_module.Registry()
    _, _, watch = registry.watch()
    for index in range(5):
        registry.put(f"vm{index}", record(RunStrategy.ALWAYS, Phase.RUNNING))
    events = [watch.next_event(timeout=0) for _ in range(3)]
    assert events[-1] is not None and events[-1].type == "OVERFLOW"
    assert watch.next_event(timeout=0) is None  # cut off: no further events
