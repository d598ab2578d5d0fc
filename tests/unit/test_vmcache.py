"""The VM cache's watches: a consistent snapshot, then every change, or a clear cut-off."""

from __future__ import annotations

import pytest

from agent.models import Phase, RunStrategy
from tests.unit.test_restarts import record


def test_a_watch_that_overflows_is_cut_off_with_an_overflow_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent.domain import vmcache as registry_module

    monkeypatch.setattr(registry_module, "_WATCH_BUFFER", 3)
    registry = registry_module.VMCache()
    _, _, watch = registry.watch()
    for index in range(5):
        registry.put(f"vm{index}", record(RunStrategy.ALWAYS, Phase.RUNNING))
    event = watch.next_event(timeout=0)
    assert event is not None and event.type == "OVERFLOW"  # what it held is dropped at once
    assert watch.next_event(timeout=0) is None  # cut off: no further events


def test_a_watch_is_bounded_by_bytes_too() -> None:
    from agent.domain.vmcache import VMCache, record_bytes

    big = record(RunStrategy.ALWAYS, Phase.RUNNING)
    registry = VMCache(watch_buffer_bytes=10 * record_bytes(big))
    _, _, watch = registry.watch()
    for index in range(11):
        registry.put(f"vm{index}", big)
    assert watch.buffered_bytes == 0 and watch not in registry._watches
    event = watch.next_event(timeout=0)
    assert event is not None and event.type == "OVERFLOW"
