"""FakeClock: a ``Clock`` whose time moves only when the code under test sleeps or waits.

``sleep`` and ``wait`` never block: they move time forward and fire the timers that fall
due on the way (a slow guest powering off, say), on the calling thread. Every sleep and
wait is recorded, so tests assert on delays rather than measuring them.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable

__all__ = ["FakeClock"]

_WALL_AT_ZERO = 1_767_225_600.0  # 2026-01-01T00:00:00Z: wall = this + monotonic


class FakeClock:
    """Usage::

    clock = FakeClock()
    clock.call_later(7, lambda: print("7 s later"))
    clock.sleep(10)          # prints, returns at once
    assert clock.monotonic() == 10 and clock.sleeps == [10]
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._time = 0.0
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.sleeps: list[float] = []
        self.waits: list[float] = []

    def now(self) -> float:
        return _WALL_AT_ZERO + self.monotonic()

    def monotonic(self) -> float:
        with self._lock:
            return self._time

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
        self.advance(seconds)

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        """Move to the next timer within ``seconds`` (firing it) or to the end of the wait.

        The caller holds ``condition``; timers that change what it waits for notify it on
        this thread, and the caller re-checks its predicate when this returns.
        """
        with self._lock:
            self.waits.append(seconds)
            target = self._time + max(0.0, seconds)
            if self._timers and self._timers[0][0] <= target:
                target = self._timers[0][0]
        self.advance_to(target)

    def call_later(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` once ``delay`` seconds have passed on this clock."""
        with self._lock:
            heapq.heappush(self._timers, (self._time + delay, next(self._order), action))

    def advance(self, seconds: float) -> None:
        self.advance_to(self.monotonic() + max(0.0, seconds))

    def advance_to(self, target: float) -> None:
        """Step through due timers in time order (outside the clock's lock), then to target."""
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > target:
                    self._time = max(self._time, target)
                    return
                when, _, action = heapq.heappop(self._timers)
                self._time = max(self._time, when)
            action()
