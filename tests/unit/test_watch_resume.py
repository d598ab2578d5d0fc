"""Watch continuity: resuming from a resource version, the bounded history, libvirt
reconnects, and the client's watch that resumes and re-lists by itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from agent.client.watch import resuming_watch
from agent.domain.versionceiling import VersionCeiling
from agent.domain.views import VMViews, WatchItem
from agent.domain.vmcache import VMCache, record_bytes
from agent.errors import OutOfRange
from agent.models import Phase, RunStrategy
from agent.ports import DomainInfo
from tests.unit.fake_node import make_node, vm_spec
from tests.unit.test_restarts import record

# -- the agent's side: history and resume -----------------------------------------------------

VM = record(RunStrategy.ALWAYS, Phase.RUNNING)
STOPPED = record(RunStrategy.ALWAYS, Phase.STOPPED)


def test_a_resumed_watch_gets_exactly_the_changes_after_its_version() -> None:
    cache = VMCache(start_version=100)
    cache.put("a", VM)
    _, seen, _ = cache.watch()  # what a client saw: version 101
    cache.put("b", VM)
    cache.put("a", STOPPED)
    cache.remove("b")
    missed, latest, watch = cache.resume(seen)
    assert [(e.type, e.resource_version) for e in missed] == [
        ("ADDED", 102),
        ("MODIFIED", 103),
        ("DELETED", 104),
    ]
    assert latest == 104
    cache.put("c", VM)  # after the resume: live, once
    event = watch.next_event(timeout=0)
    assert event is not None and (event.type, event.resource_version) == ("ADDED", 105)
    assert cache.resume(latest + 1)[0] == []  # nothing after the latest


def test_a_version_older_than_the_history_is_out_of_range_and_says_to_list_again() -> None:
    cache = VMCache(start_version=0, history_events=2)
    for name in ("a", "b", "c"):
        cache.put(name, VM)
    cache.resume(1)  # the changes after 1 (2 and 3) are still held
    with pytest.raises(OutOfRange, match="resource_version 0 is too old.*list the VMs again"):
        cache.resume(0)


def test_the_history_is_bounded_in_bytes_too() -> None:
    cache = VMCache(start_version=0, history_bytes=3 * record_bytes(VM))
    for index in range(10):
        cache.put(f"vm{index}", VM)
    assert len(cache.history) == 3 and cache.history.bytes <= 3 * record_bytes(VM)
    with pytest.raises(OutOfRange):
        cache.resume(6)
    assert len(cache.resume(7)[0]) == 3


def test_a_version_from_an_earlier_run_of_the_agent_cannot_be_resumed() -> None:
    earlier = VMCache()
    earlier.put("a", VM)
    version = earlier.resource_version
    later = VMCache()  # the agent restarted: versions start at its start time
    assert later.resource_version >= version
    with pytest.raises(OutOfRange, match="too old"):
        later.resume(version)
    with pytest.raises(OutOfRange, match="newer than this agent's latest"):
        later.resume(later.resource_version + 1)


def test_a_clock_stepped_back_between_runs_never_makes_an_old_version_resumable(
    tmp_path: Path,
) -> None:
    earlier = VMCache(start_version=5_000_000, state_dir=str(tmp_path))
    for name in ("a", "b", "c"):
        earlier.put(name, VM)
    old = earlier.resource_version - 1  # what a watcher of the earlier run saw
    later = VMCache(start_version=1_000_000, state_dir=str(tmp_path))  # the clock went back
    for name in ("a", "b", "c", "d"):  # as many changes as the old version is ahead, more
        later.put(name, VM)
    assert later.resource_version > earlier.resource_version
    with pytest.raises(OutOfRange, match="too old"):
        later.resume(old)


def test_each_block_of_versions_is_recorded_before_it_is_handed_out(tmp_path: Path) -> None:
    path = str(tmp_path / "resource-version")
    ceiling = VersionCeiling(path, block=2)
    assert ceiling.start(100) == 100
    for version in range(101, 106):
        ceiling.handed_out(version)
        assert VersionCeiling(path)._read() > version  # a next run would start past it
    assert ceiling.limit == 106  # written at 100, 102, 104: not once per version
    assert VersionCeiling(path).start(10**9) == 10**9  # the clock, when it is ahead


def _items(views: VMViews, since: int = 0) -> Iterator[WatchItem]:
    return views.watch("", "", keep_going=lambda: True, since=since)


def _next_change(items: Iterator[WatchItem]) -> tuple[str, str]:
    item = next(items)
    assert item.record is not None
    return item.type, item.record.spec.name


def test_views_resume_with_the_changes_then_synced(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    node.service.apply(vm_spec("web", run_strategy="Manual"))
    views = VMViews(node.service.cache, node.service.files)
    _, version = views.list()
    node.service.apply(vm_spec("db", run_strategy="Manual"))
    items = _items(views, since=version)
    assert _next_change(items) == ("ADDED", "db")  # no snapshot: web is not sent again
    synced = next(items)
    assert synced.type == "SYNCED" and synced.resource_version == views.cache.resource_version


def test_a_change_missed_while_libvirt_was_away_reaches_the_watch_and_nothing_else(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path)
    node.service.apply(vm_spec("web"))
    node.service.apply(vm_spec("db"))
    node.tasks.run_all()
    views = VMViews(node.service.cache, node.service.files)
    items = _items(views)
    assert [next(items).type for _ in range(3)] == ["ADDED", "ADDED", "SYNCED"]
    before = node.service.cache.resource_version
    node.hv.hold_events = True
    node.hv.crash("default_db")  # libvirtd is restarting: its events never arrive
    node.hv._held_events.clear()
    node.hv.hold_events = False
    node.hv.reconnect()
    assert node.tasks.run_all()[0] == "resync"
    change = next(items)
    assert change.type == "MODIFIED" and change.record is not None
    assert (change.record.spec.name, change.record.status.phase) == ("db", Phase.FAILED)
    # web ran on: no event at all (neither Failed nor Deleted) for it.
    changes = node.service.cache.history.since(before)
    assert {e.record.spec.name for e in changes if e.record} == {"db"}


def test_a_vm_made_while_the_resync_runs_is_never_reported_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node(tmp_path)
    node.service.apply(vm_spec("web", run_strategy="Manual"))
    listed = node.hv.list_domains

    def list_then_a_verb_finishes() -> list[DomainInfo]:
        domains = listed()
        node.service.apply(vm_spec("db", run_strategy="Manual"))  # (injected: the race)
        return domains

    monkeypatch.setattr(node.hv, "list_domains", list_then_a_verb_finishes)
    version = node.service.cache.resource_version
    node.service.resync()
    changes = node.service.cache.history.since(version)
    assert [(e.type, e.record and e.record.spec.name) for e in changes] == [("ADDED", "db")]
    assert [r.spec.name for r in node.vms()] == ["db", "web"]


# -- the client's side: resume, re-list ---------------------------------------------------------


class _Lost(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._code.name


class _Call:
    """One scripted stream: its events, then the status it ends with (None: open, ends)."""

    def __init__(self, events: list[pb.WatchVirtualMachinesResponse], end: grpc.StatusCode | None):
        self.events, self.end = events, end

    def __iter__(self) -> Iterator[pb.WatchVirtualMachinesResponse]:
        yield from self.events
        if self.end is not None:
            raise _Lost(self.end)

    def cancel(self) -> None:
        pass


def _ev(
    kind: int, name: str = "", version: int = 0, phase: int = 0
) -> pb.WatchVirtualMachinesResponse:
    vm = vm_pb2.VirtualMachine()
    if name:
        vm.metadata.namespace, vm.metadata.name = "default", name
        vm.status.phase = phase  # type: ignore[assignment]
    return pb.WatchVirtualMachinesResponse(type=kind, vm=vm, resource_version=version)  # type: ignore[arg-type]


ADDED, MODIFIED, DELETED, SYNCED = (
    pb.EVENT_TYPE_ADDED,
    pb.EVENT_TYPE_MODIFIED,
    pb.EVENT_TYPE_DELETED,
    pb.EVENT_TYPE_SYNCED,
)


def _watch(
    calls: list[_Call], opened: list[int], since: int = 0, **options: object
) -> list[tuple[int, str, int]]:
    def open_call(version: int, timeout: float | None) -> _Call:
        opened.append(version)
        return calls.pop(0)

    events = resuming_watch(
        open_call,
        since=since,
        timeout=None,
        backoff=lambda attempt: 0.0,
        sleep=lambda seconds: None,
        error=lambda exc: RuntimeError(exc.code().name),
        **options,  # type: ignore[arg-type]
    )
    return [(e.type, e.vm.metadata.name, e.resource_version) for e in events]


def test_a_lost_stream_resumes_after_the_last_version_delivered() -> None:
    opened: list[int] = []
    calls = [
        _Call(
            [_ev(ADDED, "a", 10), _ev(SYNCED, "", 10), _ev(ADDED, "b", 11)],
            grpc.StatusCode.UNAVAILABLE,
        ),
        _Call([], grpc.StatusCode.UNAVAILABLE),  # the agent is still restarting
        _Call([_ev(MODIFIED, "b", 12), _ev(SYNCED, "", 12), _ev(DELETED, "a", 13)], None),
    ]
    assert _watch(calls, opened) == [
        (ADDED, "a", 10),
        (SYNCED, "", 10),
        (ADDED, "b", 11),
        (MODIFIED, "b", 12),  # no second SYNCED, nothing twice
        (DELETED, "a", 13),
    ]
    assert opened == [0, 11, 11]


def test_out_of_range_relists_and_hands_on_only_the_difference() -> None:
    opened: list[int] = []
    calls = [
        _Call(
            [_ev(ADDED, "a", 10), _ev(ADDED, "b", 10), _ev(ADDED, "c", 10), _ev(SYNCED, "", 10)],
            grpc.StatusCode.UNAVAILABLE,
        ),
        _Call([], grpc.StatusCode.OUT_OF_RANGE),  # the agent restarted meanwhile
        _Call([_ev(ADDED, "a", 5), _ev(ADDED, "b", 5, phase=3)], grpc.StatusCode.UNAVAILABLE),
        _Call(  # the snapshot cut short is taken again, and compared again
            [
                _ev(ADDED, "a", 6),
                _ev(ADDED, "b", 6, phase=3),
                _ev(ADDED, "d", 6),
                _ev(SYNCED, "", 6),
            ],
            None,
        ),
    ]
    assert _watch(calls, opened) == [
        (ADDED, "a", 10),
        (ADDED, "b", 10),
        (ADDED, "c", 10),
        (SYNCED, "", 10),
        (MODIFIED, "b", 5),  # a is unchanged: not handed on
        (ADDED, "d", 6),
        (DELETED, "c", 6),  # gone while the watch was away
    ]
    assert opened == [0, 10, 0, 0]


def test_the_callers_own_version_out_of_range_is_raised_for_it_to_list() -> None:
    with pytest.raises(RuntimeError, match="OUT_OF_RANGE"):
        _watch([_Call([], grpc.StatusCode.OUT_OF_RANGE)], [], since=7)


def test_a_callers_own_version_out_of_range_later_is_raised_too_never_a_partial_relist() -> None:
    # The caller listed a and b at 100 and watches from there: the watch only ever saw a, so
    # a re-list could not tell it that b went away. The caller must list again itself.
    calls = [
        _Call([_ev(SYNCED, "", 100), _ev(MODIFIED, "a", 101)], grpc.StatusCode.UNAVAILABLE),
        _Call([], grpc.StatusCode.OUT_OF_RANGE),  # the agent restarted; b was deleted
        _Call([_ev(ADDED, "a", 5), _ev(SYNCED, "", 5)], None),
    ]
    seen: list[tuple[int, str, int]] = []
    opened: list[int] = []

    def open_call(version: int, timeout: float | None) -> _Call:
        opened.append(version)
        return calls.pop(0)

    events = resuming_watch(
        open_call,
        since=100,
        timeout=None,
        backoff=lambda attempt: 0.0,
        sleep=lambda seconds: None,
        error=lambda exc: RuntimeError(exc.code().name),
    )
    with pytest.raises(RuntimeError, match="OUT_OF_RANGE"):
        for event in events:
            seen.append((event.type, event.vm.metadata.name, event.resource_version))
    assert seen == [(SYNCED, "", 100), (MODIFIED, "a", 101)]
    assert opened == [100, 101]


def test_other_errors_and_an_agent_away_too_long_end_the_watch() -> None:
    with pytest.raises(RuntimeError, match="PERMISSION_DENIED"):
        _watch([_Call([], grpc.StatusCode.PERMISSION_DENIED)], [])
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):  # the stream limit
        _watch([_Call([], grpc.StatusCode.RESOURCE_EXHAUSTED)], [])
    now = iter(range(0, 1000, 30))
    calls = [_Call([], grpc.StatusCode.UNAVAILABLE) for _ in range(5)]
    opened: list[int] = []
    with pytest.raises(RuntimeError, match="UNAVAILABLE"):
        _watch(calls, opened, resume_for=60.0, monotonic=lambda: float(next(now)))
    assert len(opened) == 3  # at 0, 30 and 60 s; 90 s after the loss it gives up
