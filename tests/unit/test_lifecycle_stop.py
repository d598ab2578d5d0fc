"""Stopping VMs on the fake hypervisor: the ACPI grace loop, its escalation, and who waits.

Time is the fake clock's: a 30 s grace period runs in microseconds, and the assertions
are on when (in fake seconds) the agent pressed the button or pulled the plug.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.errors import Conflict
from agent.models import Phase
from tests.unit.fake_node import FakeNode, make_node, vm_spec

WEB = "default_web"


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    node = make_node(tmp_path)
    node.service.apply(vm_spec(grace=30))
    return node


def presses(node: FakeNode, start: float) -> list[tuple[float, str]]:
    """(seconds since start, method) of every button press and plug pull."""
    return [(c.at - start, c.method) for c in node.hv.calls_on(WEB, "shutdown", "destroy")]


def test_a_guest_ignoring_acpi_gets_the_button_every_5s_then_is_destroyed_at_the_deadline(
    node: FakeNode,
) -> None:
    node.hv.ignore_acpi(WEB)
    start = node.clock.monotonic()
    record = node.service.stop("default", "web")  # the spec's 30 s grace period
    assert presses(node, start) == [
        (0.0, "shutdown"),
        (5.0, "shutdown"),
        (10.0, "shutdown"),
        (15.0, "shutdown"),
        (20.0, "shutdown"),
        (25.0, "shutdown"),
        (30.0, "destroy"),
    ]
    assert (record.status.phase, record.status.reason) == (Phase.STOPPED, "Destroyed")
    assert node.clock.monotonic() - start == 30.0


def test_the_last_wait_is_cut_to_the_deadline_of_a_grace_period_given_by_the_call(
    node: FakeNode,
) -> None:
    node.hv.ignore_acpi(WEB)
    start = node.clock.monotonic()
    node.service.stop("default", "web", grace_period=12)
    assert presses(node, start) == [
        (0.0, "shutdown"),
        (5.0, "shutdown"),
        (10.0, "shutdown"),
        (12.0, "destroy"),
    ]


def test_a_guest_obeying_acpi_stops_at_once_without_destroy(node: FakeNode) -> None:
    start = node.clock.monotonic()
    record = node.service.stop("default", "web")
    assert presses(node, start) == [(0.0, "shutdown")]
    assert (record.status.phase, record.status.reason) == (Phase.SUCCEEDED, "Shutdown")
    assert node.clock.monotonic() == start  # nothing waited


def test_a_slow_guest_gets_the_button_again_and_is_not_destroyed_within_grace(
    node: FakeNode,
) -> None:
    node.hv.slow_shutdown(WEB, 7)  # powers off 7 s after it first sees the button
    start = node.clock.monotonic()
    record = node.service.stop("default", "web")
    assert presses(node, start) == [(0.0, "shutdown"), (5.0, "shutdown")]
    assert record.status.phase == Phase.SUCCEEDED
    assert node.clock.monotonic() - start == 7.0  # returned when the guest went down


def test_a_guest_slower_than_the_grace_period_is_destroyed(node: FakeNode) -> None:
    node.hv.slow_shutdown(WEB, 40)
    start = node.clock.monotonic()
    node.service.stop("default", "web", grace_period=10)
    assert presses(node, start)[-1] == (10.0, "destroy")


def test_a_missed_stop_event_is_noticed_by_asking_libvirt_after_each_wait(
    node: FakeNode,
) -> None:
    node.hv.slow_shutdown(WEB, 3)
    node.hv.hold_events = True  # libvirt's event never arrives
    start = node.clock.monotonic()
    node.service.stop("default", "web")
    # Noticed at the end of the first 5 s wait, by reading the domain: no destroy.
    assert presses(node, start) == [(0.0, "shutdown")]
    assert node.clock.monotonic() - start == 5.0
    info = node.hv.lookup(WEB)
    assert info is not None and info.reason == "shutdown"


def test_a_paused_vm_is_resumed_so_that_it_can_see_the_button(node: FakeNode) -> None:
    node.service.pause("default", "web")
    record = node.service.stop("default", "web")
    methods = [c.method for c in node.hv.calls_on(WEB, "resume", "shutdown", "destroy")]
    assert methods[-2:] == ["resume", "shutdown"]
    assert record.status.phase == Phase.SUCCEEDED


@pytest.mark.parametrize(("grace", "force"), [(30, True), (0, False)])
def test_force_or_a_zero_grace_period_destroys_without_the_button(
    node: FakeNode, grace: int, force: bool
) -> None:
    node.service.stop("default", "web", grace_period=grace, force=force)
    assert [c.method for c in node.hv.calls_on(WEB, "shutdown", "destroy")] == ["destroy"]


def test_delete_waits_out_the_grace_period_then_removes_everything(node: FakeNode) -> None:
    node.hv.ignore_acpi(WEB)
    start = node.clock.monotonic()
    node.service.delete("default", "web", grace_period=10)
    assert presses(node, start)[-1] == (10.0, "destroy")
    assert WEB not in node.hv.names()
    assert not node.vm_dir("web").exists()
    assert node.network.allocated == set()
    assert node.service.cache.names() == set()


def test_a_stop_is_recorded_and_an_always_vm_stopped_on_purpose_stays_down(
    node: FakeNode,
) -> None:
    node.service.stop("default", "web")
    stopped_at = node.clock.now()
    node.clock.advance(3)
    assert node.tasks.run_all() == ["stopped-default_web"]  # no restart queued
    record = node.service.get("default", "web")
    assert record.books.halted
    assert record.status.stopped_at == stopped_at
    assert node.hv.calls_on(WEB, "start")[-1].at < stopped_at  # the create's start only


def test_a_client_call_while_another_client_call_holds_the_vm_gets_conflict(
    node: FakeNode,
) -> None:
    held = node.hv.hold("shutdown")
    stopping = threading.Thread(target=node.service.stop, args=("default", "web"))
    stopping.start()
    try:
        assert held.reached.wait(10), "the stop never pressed the button"
        with pytest.raises(Conflict, match=r"stop on vm default/web is in progress"):
            node.service.start("default", "web")
    finally:
        held.release()
        stopping.join(10)
    assert node.service.get("default", "web").status.phase == Phase.SUCCEEDED


@pytest.mark.parametrize(
    ("task", "starts"),
    [
        ("stopped-default_web", 1),  # recording the stop; the restart then finds it halted
        ("restart-default_web", 2),  # restarting it; the client's stop then stops it again
    ],
)
def test_a_client_call_waits_for_the_agents_own_background_work(
    node: FakeNode, task: str, starts: int
) -> None:
    node.hv.guest_poweroff(WEB)  # Always: the agent records the stop, then restarts it
    assert node.tasks.names() == ["stopped-default_web", "restart-default_web"]
    work = node.tasks.take(task)
    held = node.hv.hold("lookup")  # the task holds the VM's lock, stuck in libvirt
    background = threading.Thread(target=work)
    background.start()
    try:
        assert held.reached.wait(10), f"{task} never read the domain"
        # Let the task go on shortly after the client's call queued behind it. (Were the
        # release first, the call would find the lock free: the test could pass without
        # waiting, but never by raising Conflict.)
        threading.Timer(0.2, held.release).start()
        record = node.service.stop("default", "web")  # waits instead of Conflict
    finally:
        held.release()
        background.join(10)
    assert record.status.phase == Phase.SUCCEEDED
    assert record.books.halted
    node.tasks.run_all()
    assert node.service.get("default", "web").status.phase == Phase.SUCCEEDED
    assert len(node.hv.calls_on(WEB, "start")) == starts
