"""The VM cache's recent changes, bounded in count and bytes, from which a watch resumes."""

from __future__ import annotations

import collections
import itertools
from typing import TYPE_CHECKING

from agent.errors import OutOfRange

if TYPE_CHECKING:
    from agent.domain.vmcache import WatchEvent

__all__ = ["WATCH_HISTORY_BYTES", "WATCH_HISTORY_EVENTS", "WatchHistory"]

WATCH_HISTORY_EVENTS = 1000  # the default of --watch-history
# Each change holds a whole VM (user data included): a count alone bounds nothing.
WATCH_HISTORY_BYTES = 8 * 1024 * 1024

_RELIST = (
    "list the VMs again (or watch without a resource_version: a snapshot comes first) "
    "and watch from the list's resource_version"
)


class WatchHistory:
    """The last changes, oldest first, with versions ``floor + 1 .. latest`` (no gaps).

    Not thread-safe: the VM cache calls it under its lock.
    """

    def __init__(self, start_version: int, *, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.floor = start_version  # the oldest version a watch may resume from
        self.latest = start_version
        self._events: collections.deque[WatchEvent] = collections.deque()
        self._bytes = 0

    def append(self, event: WatchEvent) -> None:
        """Keep ``event`` (the next version), forgetting the oldest beyond the bounds."""
        self._events.append(event)
        self._bytes += event.size
        self.latest = event.resource_version
        while self._events and (
            len(self._events) > self.max_events or self._bytes > self.max_bytes
        ):
            oldest = self._events.popleft()
            self._bytes -= oldest.size
            self.floor = oldest.resource_version

    def since(self, version: int) -> list[WatchEvent]:
        """Every change after ``version``; OutOfRange when they are not all here."""
        if version > self.latest:
            raise OutOfRange(
                f"resource_version {version} is newer than this agent's latest "
                f"({self.latest}): it is from another agent or an earlier run of this one; "
                + _RELIST
            )
        if version < self.floor:
            raise OutOfRange(
                f"resource_version {version} is too old to resume from: this agent keeps "
                f"the changes after {self.floor} (it restarted since, or more than "
                f"{self.max_events} changes or {self.max_bytes} bytes of them came after "
                "it); " + _RELIST
            )
        return list(itertools.islice(self._events, version - self.floor, None))

    def __len__(self) -> int:
        return len(self._events)

    @property
    def bytes(self) -> int:
        return self._bytes
