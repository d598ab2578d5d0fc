"""CallSlots: at most so many calls of a kind at once; one more is refused, not queued."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from agent.errors import ResourceExhausted

__all__ = ["CallSlots"]


class CallSlots:
    """At most ``limit`` calls of a kind at once; one more is RESOURCE_EXHAUSTED at once.

    Every call holds a server thread while it runs: streams for as long as they are open,
    Stop and Delete for a grace period, Apply for an image pull, any verb for as long as
    libvirt takes. Capping them keeps threads free for quick calls and health checks (a
    starved liveness probe restarts the agent).
    """

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self._what = what
        self._free = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def take(self) -> Iterator[None]:
        if not self._free.acquire(blocking=False):
            raise ResourceExhausted(
                f"{self.limit} {self._what} are in progress on this agent, its limit; retry later"
            )
        try:
            yield
        finally:
            self._free.release()
