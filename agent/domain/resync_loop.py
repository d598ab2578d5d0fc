"""PeriodicResync: the safety net that runs ``NodeSync.repair_network`` every interval.

Time comes from the injected ``Clock`` (waits on a condition the stop notifies), so tests
drive it with a fake clock; a pass runs only while the agent is ready (libvirt connected,
state rebuilt), and a failing pass is logged and tried again at the next interval.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import agent.metrics.agent_metrics as agent_metrics
from agent.network.drift import KINDS
from agent.ports import Clock, NetworkRepair

if TYPE_CHECKING:
    from agent.domain.sync import NodeSync

__all__ = ["PeriodicResync"]

log = logging.getLogger(__name__)


class PeriodicResync:
    """Usage::

    resync = PeriodicResync.of(service.sync, interval=60.0)   # or PeriodicResync(...)
    resync.start()   # a daemon thread; interval 0: nothing runs
    resync.stop()
    """

    def __init__(
        self,
        repair: Callable[[], tuple[NetworkRepair, ...]],
        clock: Clock,
        *,
        interval: float,
        ready: Callable[[], bool],
    ) -> None:
        self._repair = repair
        self._clock = clock
        self.interval = interval
        self._ready = ready
        self._wake = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        agent_metrics.resync_kinds(KINDS)  # every kind shows, at 0, from the start

    @classmethod
    def of(cls, sync: NodeSync, interval: float) -> PeriodicResync:
        """The node's safety net: ``sync.repair_network`` on its clock, while it is ready."""
        readiness = sync.readiness
        return cls(
            sync.repair_network, sync.clock, interval=interval, ready=lambda: readiness.ready
        )

    def start(self) -> None:
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self.run, name="resync", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def run(self) -> None:
        """Wait an interval, run a pass; until ``stop``."""
        while self._wait_interval():
            if not self._ready():
                continue  # the resync at (re)connect comes first
            try:
                self._repair()
            except Exception:
                log.exception("periodic resync failed; trying again in %.0fs", self.interval)

    def _wait_interval(self) -> bool:
        """False once stopped."""
        with self._wake:
            deadline = self._clock.monotonic() + self.interval
            while not self._stopped:
                left = deadline - self._clock.monotonic()
                if left <= 0:
                    return True
                self._clock.wait(self._wake, left)
            return False
