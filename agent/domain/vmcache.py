"""The node's VMs as last read from libvirt, with resource versions and watchers.

The VM cache is never a source of truth: it is rebuilt from libvirt at start and
refreshed on every libvirt event. Watchers get a consistent snapshot plus every later
change, in resource-version order, or resume after a version the bounded history still holds.

Resource versions count changes from the agent's start time in microseconds, and past every
version an earlier run handed out (kept in the state dir, see ``agent.domain.versionceiling``: the
clock may have stepped back between runs), so a version from an earlier run of the agent is
older than any of this run: a watch resuming from it is refused (too old), never misread as
a version of this run.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from agent.domain.clock import SYSTEM_CLOCK
from agent.domain.versionceiling import VersionCeiling
from agent.domain.watchhistory import WATCH_HISTORY_BYTES, WATCH_HISTORY_EVENTS, WatchHistory
from agent.models import Bookkeeping, CloudInitConfigDrive, CloudInitNoCloud, VMSpec, VMStatus
from agent.ports import Clock

__all__ = ["WATCH_BUFFER_BYTES", "VMRecord", "VMCache", "WatchEvent", "Watch", "record_bytes"]

_WATCH_BUFFER = 10_000
VERSION_FILE = "resource-version"  # in the state dir (agent.domain.versionceiling)
# What a watcher that does not read may hold: its events are cut off beyond this. Each event
# holds a whole VM (user data included), so a count alone bounds nothing.
WATCH_BUFFER_BYTES = 8 * 1024 * 1024
_RECORD_OVERHEAD = 2048  # the fixed-size part of a record, roughly


@dataclass(frozen=True, slots=True)
class VMRecord:
    """One VM: its stored spec, the agent's books and the derived status."""

    spec: VMSpec
    books: Bookkeeping
    status: VMStatus


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change: type is ADDED, MODIFIED or DELETED (or OVERFLOW for a slow watcher)."""

    type: str
    record: VMRecord | None
    resource_version: int
    size: int = 0  # roughly, in bytes (see record_bytes)


class Watch:
    """A watcher's stream of events; iterate with ``next_event(timeout)``."""

    def __init__(self, cache: VMCache) -> None:
        self._cache = cache
        self.queue: queue.Queue[WatchEvent] = queue.Queue(maxsize=_WATCH_BUFFER)
        self.buffered_bytes = 0  # changed under the VM cache's lock

    def next_event(self, timeout: float) -> WatchEvent | None:
        try:
            event = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        with self._cache._lock:
            self.buffered_bytes -= event.size
        return event

    def close(self) -> None:
        self._cache._unwatch(self)


class VMCache:
    """Thread-safe map of domain name → VMRecord."""

    def __init__(
        self,
        *,
        watch_buffer_bytes: int = WATCH_BUFFER_BYTES,
        history_events: int = WATCH_HISTORY_EVENTS,
        history_bytes: int = WATCH_HISTORY_BYTES,
        start_version: int | None = None,
        state_dir: str = "",
    ) -> None:
        """``start_version``: the clock's (default: now in microseconds); ``state_dir``: where
        runs keep the ceiling of the versions they handed out (none: the clock alone)."""
        self.watch_buffer_bytes = watch_buffer_bytes
        self._lock = threading.Condition()
        self._records: dict[str, VMRecord] = {}
        if start_version is None:
            start_version = int(SYSTEM_CLOCK.now() * 1_000_000)
        self._ceiling = VersionCeiling(os.path.join(state_dir, VERSION_FILE)) if state_dir else None
        if self._ceiling is not None:
            start_version = self._ceiling.start(start_version)
        self._version = start_version
        self.history = WatchHistory(
            start_version, max_events=history_events, max_bytes=history_bytes
        )
        self._watches: set[Watch] = set()

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._version

    def get(self, domain: str) -> VMRecord | None:
        with self._lock:
            return self._records.get(domain)

    def records(self) -> list[VMRecord]:
        with self._lock:
            return list(self._records.values())

    def names(self) -> set[str]:
        with self._lock:
            return set(self._records)

    def put(self, domain: str, record: VMRecord) -> None:
        with self._lock:
            previous = self._records.get(domain)
            if previous == record:
                return
            self._records[domain] = record
            self._publish("ADDED" if previous is None else "MODIFIED", record)

    def remove(self, domain: str) -> None:
        with self._lock:
            record = self._records.pop(domain, None)
            if record is not None:
                self._publish("DELETED", record)

    def _publish(self, kind: str, record: VMRecord) -> None:
        self._version += 1
        if self._ceiling is not None:
            self._ceiling.handed_out(self._version)
        event = WatchEvent(kind, record, self._version, record_bytes(record))
        self.history.append(event)
        for watch in list(self._watches):
            try:
                if watch.buffered_bytes + event.size > self.watch_buffer_bytes:
                    raise queue.Full
                watch.queue.put_nowait(event)
                watch.buffered_bytes += event.size
            except queue.Full:
                # A watcher that cannot keep up is cut off (its events dropped at once); it
                # must watch again, which starts with a snapshot.
                self._watches.discard(watch)
                _drain(watch.queue)
                watch.buffered_bytes = 0
                _force_put(watch.queue, WatchEvent("OVERFLOW", None, self._version))
        self._lock.notify_all()

    def watch(self) -> tuple[list[VMRecord], int, Watch]:
        """A snapshot and a Watch that receives every change after it, atomically."""
        watch = Watch(self)
        with self._lock:
            self._watches.add(watch)
            return list(self._records.values()), self._version, watch

    def resume(self, since: int) -> tuple[list[WatchEvent], int, Watch]:
        """Every change after version ``since``, the version they bring the watcher to, and a
        Watch that receives every later change, atomically; OutOfRange when the history no
        longer holds them all."""
        with self._lock:
            missed = self.history.since(since)
            watch = Watch(self)
            self._watches.add(watch)
            return missed, self._version, watch

    def _unwatch(self, watch: Watch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def poke(self) -> None:
        """Wake every ``wait_until`` to check its predicate again (it may look elsewhere)."""
        with self._lock:
            self._lock.notify_all()

    def wait_until(
        self,
        domain: str,
        predicate: Callable[[VMRecord | None], bool],
        timeout: float,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> bool:
        """Block until predicate(record) holds (checked on every change) or ``timeout``
        seconds pass on ``clock``."""
        deadline = clock.monotonic() + timeout
        with self._lock:
            while not predicate(self._records.get(domain)):
                remaining = deadline - clock.monotonic()
                if remaining <= 0:
                    return False
                clock.wait(self._lock, remaining)
            return True


def record_bytes(record: VMRecord) -> int:
    """Roughly how much memory a record holds: its client-sized parts plus a constant."""
    spec = record.spec
    size = _RECORD_OVERHEAD + sum(len(k) + len(v) for k, v in spec.labels.items())
    for volume in spec.volumes:
        source = volume.source
        if isinstance(source, CloudInitNoCloud | CloudInitConfigDrive):
            size += len(source.user_data) + len(source.network_data)
    boot = spec.firmware.kernel_boot
    return size + (len(boot.kernel_args) if boot else 0)


def _drain(target: queue.Queue[WatchEvent]) -> None:
    while True:
        try:
            target.get_nowait()
        except queue.Empty:
            return


def _force_put(target: queue.Queue[WatchEvent], event: WatchEvent) -> None:
    while True:
        try:
            target.put_nowait(event)
            return
        except queue.Full:
            try:
                target.get_nowait()
            except queue.Empty:
                pass
