"""BoundedStats: the bulk stats call of a scrape, with a time bound and shared by overlapping
scrapes.

A scrape joins the call in flight (overlapping scrapes never multiply libvirt calls) or
starts one on a worker thread. A call that has not answered within half the bound is
abandoned and counted as a miss: a frozen QEMU holds its domain's job inside that call
forever, so the scrape starts one fresh call, which libvirt's NOWAIT lets skip the stuck
domain's job-bound stats, and waits for it until the bound. Whatever happens, ``fetch``
returns within the bound. At most ``max_stuck`` abandoned calls may still be running; past
that, scrapes serve no VM stats (and count it) rather than pile up threads.
"""

from __future__ import annotations

import threading
import time

import agent.metrics.agent_metrics as agent_metrics
from agent.errors import Unavailable
from agent.metrics.ports import DomainStats, DomainStatsSource

__all__ = ["BoundedStats"]


class _Call:
    """One bulk stats call running on its own daemon thread."""

    def __init__(self, source: DomainStatsSource) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.result: list[DomainStats] = []
        self._source = source
        threading.Thread(target=self._run, name="metrics-stats", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._source.all_domain_stats()
        except Unavailable:
            agent_metrics.scrape_missed("unavailable")
        except Exception:  # a scrape must never fail on libvirt: count it, serve the rest
            agent_metrics.scrape_missed("error")
        finally:
            self.done.set()


class BoundedStats:
    """``fetch()``: the newest bulk stats, never later than ``bound`` seconds."""

    def __init__(self, source: DomainStatsSource, *, bound: float = 4.0, max_stuck: int = 4):
        self.source = source
        self.bound = bound
        self.max_stuck = max_stuck
        self._lock = threading.Lock()
        self._current: _Call | None = None
        self._stuck: list[_Call] = []
        self._waiting = 0

    def fetch(self) -> list[DomainStats]:
        deadline = time.monotonic() + self.bound
        for patience in (self.bound / 2, self.bound):
            call = self._shared_call()
            if call is None:
                agent_metrics.scrape_missed("stuck")
                return []
            if self._wait(call, min(deadline, call.started + patience)):
                return call.result
            self._abandon(call)
        return []

    def waiting(self) -> int:
        """Scrapes waiting for a call right now."""
        with self._lock:
            return self._waiting

    def _wait(self, call: _Call, until: float) -> bool:
        with self._lock:
            self._waiting += 1
        try:
            return call.done.wait(max(0.0, until - time.monotonic()))
        finally:
            with self._lock:
                self._waiting -= 1

    def stuck_calls(self) -> int:
        with self._lock:
            self._stuck = [call for call in self._stuck if not call.done.is_set()]
            return len(self._stuck)

    def _shared_call(self) -> _Call | None:
        with self._lock:
            current = self._current
            if current is not None and not current.done.is_set():
                return current
            self._stuck = [call for call in self._stuck if not call.done.is_set()]
            if len(self._stuck) >= self.max_stuck:
                return None
            self._current = _Call(self.source)
            return self._current

    def _abandon(self, call: _Call) -> None:
        with self._lock:
            if self._current is not call or call.done.is_set():
                return  # another scrape abandoned it already, or it just answered
            self._current = None
            self._stuck.append(call)
        agent_metrics.scrape_missed("timeout")
