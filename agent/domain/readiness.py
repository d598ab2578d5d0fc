"""Readiness: the agent serves once libvirt is connected and the VMs were read back from it."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Readiness"]


class Readiness:
    """Connected to libvirt, and the VM cache rebuilt on this connection: one state, one lock.

    Each connection starts an epoch; a resync marks its own epoch synced, so a resync that
    began on a connection since lost can never report the agent ready.

    Usage::

        readiness = Readiness()
        readiness.watch(server.set_serving)   # called with True/False on every change
        epoch = readiness.connected()          # from the hypervisor's connection callback
        readiness.synced(epoch)                # once the resync on that connection succeeded
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._epoch = 0
        self._connected = False
        self._synced = False
        self._listeners: list[Callable[[bool], None]] = []
        # Listeners hear of changes one at a time, each time the state as it is then: a late
        # notification can never leave them with an old answer.
        self._delivery = threading.Lock()

    @property
    def ready(self) -> bool:
        with self._changed:
            return self._connected and self._synced

    def watch(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(ready)`` now and on every change."""
        with self._changed:
            self._listeners.append(listener)
        self._notify()

    def connected(self) -> int:
        """A new connection: not ready until synced; returns its epoch."""
        with self._changed:
            self._epoch += 1
            self._connected, self._synced = True, False
            epoch = self._epoch
        self._notify()
        return epoch

    def disconnected(self) -> None:
        with self._changed:
            self._connected, self._synced = False, False
        self._notify()

    def synced(self, epoch: int) -> bool:
        """Mark the connection of ``epoch`` synced; False when it is no longer the current one."""
        with self._changed:
            if epoch != self._epoch or not self._connected:
                return False
            self._synced = True
        self._notify()
        return True

    def is_current(self, epoch: int) -> bool:
        with self._changed:
            return epoch == self._epoch and self._connected

    def wait(self, timeout: float) -> bool:
        """Block until ready (True) or ``timeout`` seconds pass (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._connected and self._synced, timeout)

    def _notify(self) -> None:
        with self._delivery:
            with self._changed:
                self._changed.notify_all()
                ready = self._connected and self._synced
                listeners = list(self._listeners)
            for listener in listeners:
                listener(ready)
