"""Image pulls shown in VM status: clients see "pulled N of M bytes" while Apply pulls.

Apply pulls a container disk before the domain is defined, so for a new VM libvirt knows
nothing yet. While the pull runs, the VM cache holds a stand-in record for the VM (phase
Pending, reason ``PullingImage``, condition ``ImagePulling`` whose message is ``volume
<name>: <image>: <done> of <total> bytes``), so Get, List and Watch show the progress. An
existing VM keeps its record, with the condition added. When the pull ends the stand-in is
left for the lifecycle's refresh to replace; when it fails, watchers see the stand-in turn
Failed (reason ``ImagePullFailed``) and disappear, and an existing VM gets its record back.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from agent.disks.ports import PullProgress
from agent.domain.vmcache import VMCache, VMRecord
from agent.models import Bookkeeping, Condition, Phase, VMSpec, VMStatus

__all__ = ["CONDITION", "PullStatusPublisher"]

CONDITION = "ImagePulling"
_MIN_INTERVAL = 0.25  # seconds between published updates; the first and last always go out


class PullStatusPublisher:
    """A PullObserver (see ``agent.disks.ports``) writing into the VM cache.

    Usage::

        publisher = PullStatusPublisher(cache, node_name="node-1")
        VMFiles(..., pulls=publisher)
    """

    def __init__(
        self, cache: VMCache, *, node_name: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cache = cache
        self.node_name = node_name
        self.clock = clock
        self._lock = threading.Lock()
        # domain → (record before the pull or None, stand-in we put, time of last update)
        self._active: dict[str, tuple[VMRecord | None, VMRecord, float]] = {}

    def pulling(self, domain: str, spec: VMSpec, progress: PullProgress) -> None:
        now = self.clock()
        with self._lock:
            active = self._active.get(domain)
            last_done = active is not None and progress.done_bytes >= progress.total_bytes
            if active is not None and now - active[2] < _MIN_INTERVAL and not last_done:
                return
            before = active[0] if active else self.cache.get(domain)
            record = self._record(spec, before, progress)
            self._active[domain] = (before, record, now)
        self.cache.put(domain, record)

    def _record(self, spec: VMSpec, before: VMRecord | None, progress: PullProgress) -> VMRecord:
        condition = Condition(
            CONDITION,
            True,
            reason="Pulling",
            message=(
                f"volume {progress.volume}: {progress.image}: "
                f"{progress.done_bytes} of {progress.total_bytes} bytes"
            ),
            last_transition_time=time.time(),
        )
        if before is not None:
            kept = tuple(c for c in before.status.conditions if c.type != CONDITION)
            status = dataclasses.replace(before.status, conditions=(*kept, condition))
            return dataclasses.replace(before, status=status)
        books = Bookkeeping(generation=1, created_at=time.time(), node_name=self.node_name)
        status = VMStatus(
            phase=Phase.PENDING,
            reason="PullingImage",
            message=condition.message,
            conditions=(condition,),
            node_name=self.node_name,
        )
        return VMRecord(spec=spec, books=books, status=status)

    def finished(self, domain: str, error: Exception | None) -> None:
        with self._lock:
            active = self._active.pop(domain, None)
        if active is None:
            return
        before, stand_in, _ = active
        current = self.cache.get(domain)
        if current is not stand_in:
            return  # the lifecycle has refreshed the VM from libvirt since: that one stands
        if error is None:
            if before is not None:
                self.cache.put(domain, before)
            return  # a new VM's stand-in stays until the lifecycle reads the defined domain
        if before is not None:
            self.cache.put(domain, before)
            return
        failed = VMStatus(
            phase=Phase.FAILED,
            reason="ImagePullFailed",
            message=str(error),
            conditions=(Condition(CONDITION, False, reason="Failed", message=str(error)),),
            node_name=self.node_name,
        )
        self.cache.put(domain, dataclasses.replace(stand_in, status=failed))
        self.cache.remove(domain)

    def forget(self, domain: str) -> None:
        """Drop a stand-in left behind when defining the VM failed after a good pull."""
        with self._lock:
            self._active.pop(domain, None)
        current = self.cache.get(domain)
        if current is not None and current.status.reason == "PullingImage":
            self.cache.remove(domain)
