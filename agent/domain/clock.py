"""SystemClock: the real time behind the ``Clock`` port (``agent.ports``)."""

from __future__ import annotations

import threading
import time

__all__ = ["SYSTEM_CLOCK", "SystemClock"]


class SystemClock:
    """The process's wall and monotonic clocks; ``sleep`` and ``wait`` block for real."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        condition.wait(seconds)


SYSTEM_CLOCK = SystemClock()
