"""The read side of the node's VMs: one VM, lists, watch streams, counts and console logs.

Everything here reads the VM cache (rebuilt from libvirt) or the VM's files; no
libvirt call, no lock of a VM, so reads stay fast while verbs run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent.domain.console import read_console
from agent.domain.files import VMFiles
from agent.domain.vmcache import VMCache, VMRecord
from agent.errors import NotFound, ResourceExhausted
from agent.labels import matches_selector, parse_selector
from agent.naming import domain_name

__all__ = ["VMViews", "WatchItem"]

_FOLLOW_POLL_SECONDS = 0.2
_WATCH_POLL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class WatchItem:
    """One message of a watch: ADDED/MODIFIED/DELETED with the VM, or SYNCED (the snapshot
    is complete; ``record`` is None)."""

    type: str
    record: VMRecord | None
    resource_version: int


class VMViews:
    """Queries over the node's VMs.

    Usage::

        views = VMViews(cache, files)
        records, version = views.list("default", "app=web")
        for item in views.watch("", "", keep_going=lambda: True): ...
    """

    def __init__(self, cache: VMCache, files: VMFiles) -> None:
        self.cache = cache
        self.files = files

    def get(self, namespace: str, name: str) -> VMRecord:
        record = self.cache.get(domain_name(namespace, name))
        if record is None:
            raise NotFound(f"vm {namespace}/{name} not found")
        return record

    def list(self, namespace: str = "", selector: str = "") -> tuple[list[VMRecord], int]:
        """The matching VMs in name order, and the resource version they are as of."""
        wanted = _matcher(namespace, selector)
        version = self.cache.resource_version
        records = [r for r in self.cache.records() if wanted(r)]
        return sorted(records, key=_order), version

    def watch(
        self,
        namespace: str,
        selector: str,
        *,
        keep_going: Callable[[], bool],
        since: int = 0,
    ) -> Iterator[WatchItem]:
        """The matching VMs as ADDED, then SYNCED, then every change while ``keep_going()``.

        With ``since`` (a resource version), the changes after it replace the snapshot
        (OutOfRange when the agent no longer holds them all: the watcher lists again).
        Raises ResourceExhausted when the watcher left too much unread (it may resume from
        the last version it received).
        """
        wanted = _matcher(namespace, selector)
        if since:
            missed, version, watch = self.cache.resume(since)
            first = [WatchItem(e.type, e.record, e.resource_version) for e in missed]
        else:
            snapshot, version, watch = self.cache.watch()
            first = [WatchItem("ADDED", r, version) for r in sorted(snapshot, key=_order)]
        try:
            yield from (item for item in first if item.record and wanted(item.record))
            yield WatchItem("SYNCED", None, version)
            while keep_going():
                event = watch.next_event(timeout=_WATCH_POLL_SECONDS)
                if event is None:
                    continue
                if event.record is None:
                    raise ResourceExhausted(
                        "the watch fell behind the node's changes (more than "
                        f"{self.cache.watch_buffer_bytes} bytes unread); watch again from "
                        "the last resource_version received (or afresh: a snapshot first)"
                    )
                if wanted(event.record):
                    yield WatchItem(event.type, event.record, event.resource_version)
        finally:
            watch.close()

    def phase_counts(self) -> dict[str, int]:
        """How many VMs are in each phase."""
        counts: dict[str, int] = {}
        for record in self.cache.records():
            phase = record.status.phase.value
            counts[phase] = counts.get(phase, 0) + 1
        return counts

    def console(
        self,
        namespace: str,
        name: str,
        *,
        tail_lines: int = 0,
        follow: bool = False,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> Iterator[bytes]:
        """The VM's serial console log; followed until the VM is deleted or ``keep_going()``
        turns false."""
        self.get(namespace, name)
        path = self.files.console_log(domain_name(namespace, name))

        def still_there() -> bool:
            self.get(namespace, name)  # NotFound ends a followed log once the VM is deleted
            return keep_going()

        return read_console(
            path,
            tail_lines=tail_lines,
            follow=follow,
            keep_going=still_there,
            wait=lambda: time.sleep(_FOLLOW_POLL_SECONDS),
        )


def _matcher(namespace: str, selector: str) -> Callable[[VMRecord], bool]:
    requirements = parse_selector(selector)

    def wanted(record: VMRecord) -> bool:
        spec = record.spec
        in_namespace = not namespace or spec.namespace == namespace
        return in_namespace and matches_selector(spec.labels, requirements)

    return wanted


def _order(record: VMRecord) -> tuple[str, str]:
    return record.spec.namespace, record.spec.name
