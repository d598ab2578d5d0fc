"""Each VM's operation lock: what holds it, who waits for it and who may cut a wait short.

A client's verb on a VM whose lock is held fails at once with Conflict, except that the
agent's own short background work (recording a stop, restarting a crashed guest) is waited
for, and a forced verb (stop --force, delete with grace 0, hard restart) cuts a graceful
stop in flight short (``preempt``), then runs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from agent.domain.locks import NamedLocks
from agent.errors import Conflict
from agent.naming import vm_key

__all__ = ["VMLocks"]

_BACKGROUND = frozenset({"note-stop", "restart-on-failure", "finish-start"})
_GRACEFUL = frozenset({"stop", "delete"})  # verbs that may wait out a grace period
_BACKGROUND_WAIT_SECONDS = 60.0
_HANDOVER_SECONDS = 1.0


class VMLocks:
    """Locks by domain name; ``preempt(domain, on)`` asks a graceful stop to end now."""

    def __init__(self, preempt: Callable[[str, bool], None]) -> None:
        self._preempt = preempt
        self.locks = NamedLocks()  # kept only while used: names never called leave nothing
        self.holders: dict[str, str] = {}  # what holds each VM's lock, for messages

    @contextlib.contextmanager
    def held(
        self, domain: str, verb: str, *, wait: float = 0.0, preempt: bool = False
    ) -> Iterator[None]:
        """Hold the VM's lock: at once or within ``wait`` seconds, else Conflict."""
        with self.locks.using(domain) as lock:
            self._take(domain, lock, wait, preempt)
            self.holders[domain] = verb
            try:
                yield
            finally:
                self.holders.pop(domain, None)
                lock.release()

    def _take(self, domain: str, lock: threading.Lock, wait: float, preempt: bool) -> None:
        acquired = lock.acquire(timeout=wait) if wait else lock.acquire(blocking=False)
        holder = self.holders.get(domain)
        if not acquired and holder is None:
            # Held, but its holder not yet (or no longer) recorded: the lock changes hands
            # this instant (a background task finishing, say); that is no conflict.
            acquired = lock.acquire(timeout=_HANDOVER_SECONDS)
            holder = self.holders.get(domain)
        if not acquired and (holder in _BACKGROUND or (preempt and holder in _GRACEFUL)):
            if holder in _GRACEFUL:
                self._preempt(domain, True)
            acquired = lock.acquire(timeout=_BACKGROUND_WAIT_SECONDS)
        if preempt:
            self._preempt(domain, False)
        if not acquired:
            holder = self.holders.get(domain, "another operation")
            raise Conflict(f"{holder} on vm {vm_key(domain)} is in progress; retry")
