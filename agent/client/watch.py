"""A VM watch that outlives lost connections and agent restarts.

When the stream breaks (UNAVAILABLE: the agent restarted or the connection dropped; or
RESOURCE_EXHAUSTED mid-stream: the watcher fell behind), the watch opens again from the last
resource version it delivered, so the caller sees every change once, in order. When the agent
cannot resume from it (OUT_OF_RANGE: too old for its history, or from before it restarted),
the watch re-lists by itself and hands on only the difference from what the caller already
saw: ADDED or MODIFIED for what changed, DELETED for what went away. The caller sees one
SYNCED, after the first snapshot (or the first replay, when it gave a resource version).
A caller that gave its own resource version listed the VMs itself: the watch never saw the
ones that did not change, so it cannot tell which of those went away. For it, OUT_OF_RANGE
(at the start or on any later resume) ends the watch: the caller lists again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from agent.api._gen.virtagent.v1 import vm_pb2, vm_service_pb2

__all__ = ["RESUME_SECONDS", "resuming_watch"]

Event = vm_service_pb2.WatchVirtualMachinesResponse
OpenCall = Callable[[int, float | None], Any]  # (resource_version, timeout) → a stream call

# How long a watch keeps trying to reach the agent again after losing it (an agent upgrade
# or restart takes some seconds).
RESUME_SECONDS = 60.0
_ADDED, _MODIFIED, _DELETED, _SYNCED = (
    vm_service_pb2.EVENT_TYPE_ADDED,
    vm_service_pb2.EVENT_TYPE_MODIFIED,
    vm_service_pb2.EVENT_TYPE_DELETED,
    vm_service_pb2.EVENT_TYPE_SYNCED,
)


@dataclass
class _Follower:
    """What the caller has seen: the VMs, and the version to resume after."""

    version: int
    synced: bool = False  # the caller has the whole state (a SYNCED went out)
    relisting: bool = False  # a snapshot is being compared with ``known``
    in_snapshot: bool = False  # the open call is sending a snapshot (before its SYNCED)
    known: dict[tuple[str, str], vm_pb2.VirtualMachine] = field(default_factory=dict)
    seen: set[tuple[str, str]] = field(default_factory=set)

    def opened(self) -> None:
        """A call was opened: from version 0 it sends a snapshot, which is compared with
        what the caller saw already (a re-list, or a snapshot cut short)."""
        self.in_snapshot = self.version == 0
        if self.in_snapshot and self.known:
            self.relisting, self.seen = True, set()

    def take(self, event: Event) -> Iterator[Event]:
        """The events to hand on for one received from the agent."""
        if event.type == _SYNCED:
            yield from self._synced(event)
            return
        key = (event.vm.metadata.namespace, event.vm.metadata.name)
        if not self.in_snapshot:
            self.version = event.resource_version
        if event.type == _DELETED:
            self.known.pop(key, None)
            yield event
            return
        previous = self.known.get(key)
        self.known[key] = event.vm
        if not self.relisting:
            yield event
            return
        self.seen.add(key)
        if previous != event.vm:
            kind = _ADDED if previous is None else _MODIFIED
            yield Event(type=kind, vm=event.vm, resource_version=event.resource_version)

    def _synced(self, event: Event) -> Iterator[Event]:
        self.version, self.in_snapshot = event.resource_version, False
        if self.relisting:
            self.relisting = False
            for key in [k for k in self.known if k not in self.seen]:
                gone = self.known.pop(key)
                yield Event(type=_DELETED, vm=gone, resource_version=event.resource_version)
        if not self.synced:
            self.synced = True
            yield event


def resuming_watch(
    open_call: OpenCall,
    *,
    since: int,
    timeout: float | None,
    backoff: Callable[[int], float],
    sleep: Callable[[float], None],
    error: Callable[[grpc.RpcError], Exception],
    resume_for: float = RESUME_SECONDS,
    monotonic: Callable[[], float] = time.monotonic,
) -> Generator[Event, None, None]:
    """Watch events from ``open_call``, resuming and re-listing as the module says.

    Raises ``error(exc)`` for any other status, when the agent stays unreachable for
    ``resume_for`` seconds, when ``timeout`` ends the watch, or on OUT_OF_RANGE when the
    caller gave its own ``since`` (the caller holds the state: it must list again).
    """
    follower = _Follower(version=since)
    deadline = None if timeout is None else monotonic() + timeout
    attempt, lost_since = 0, 0.0
    while True:
        remaining = None if deadline is None else max(deadline - monotonic(), 0.0)
        call = open_call(follower.version, remaining)
        follower.opened()
        received = False
        try:
            for event in call:
                received, attempt = True, 0
                yield from follower.take(event)
            return
        except grpc.RpcError as exc:
            code = exc.code()
            # Only a watch that delivered the whole snapshot itself can re-list and diff.
            if code == grpc.StatusCode.OUT_OF_RANGE and follower.synced and since == 0:
                follower.version = 0  # list again: a snapshot, compared with what was seen
                continue
            if attempt == 0:
                lost_since = monotonic()
            if not _resumable(code, received) or monotonic() - lost_since > resume_for:
                raise error(exc) from exc
        finally:
            call.cancel()
        sleep(backoff(attempt))
        attempt += 1


def _resumable(code: grpc.StatusCode, received: bool) -> bool:
    # Cut off for falling behind: only after events came (before, it is the stream limit).
    cut_off = code == grpc.StatusCode.RESOURCE_EXHAUSTED and received
    return code == grpc.StatusCode.UNAVAILABLE or cut_off
