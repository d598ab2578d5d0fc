"""One lock per VM name, kept only while an operation holds or waits for it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["NamedLocks"]


class NamedLocks:
    """Locks by name that are forgotten when unused: a client calling a million names that
    never exist leaves nothing behind.

    Usage::

        locks = NamedLocks()
        with locks.using("default_web") as lock:
            if lock.acquire(blocking=False):
                ...
                lock.release()
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)

    @contextlib.contextmanager
    def using(self, name: str) -> Iterator[threading.Lock]:
        """The name's lock, for the block's duration (release it inside the block)."""
        with self._guard:
            lock, users = self._locks.get(name, (None, 0))
            lock = lock or threading.Lock()
            self._locks[name] = (lock, users + 1)
        try:
            yield lock
        finally:
            with self._guard:
                _, users = self._locks[name]
                if users == 1:
                    del self._locks[name]
                else:
                    self._locks[name] = (lock, users - 1)
