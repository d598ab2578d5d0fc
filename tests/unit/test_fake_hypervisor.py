"""The fake hypervisor and clock behave like the things they stand for, or the lifecycle
tests built on them prove nothing."""

from __future__ import annotations

import pytest

from agent.domain.metadata import metadata_payload, read_metadata
from agent.errors import FailedPrecondition, NotFound
from agent.models import Bookkeeping
from agent.ports import DomainEvent, DomainState
from tests.unit.fake_clock import FakeClock
from tests.unit.fake_hypervisor import FakeHypervisor
from tests.unit.fake_node import vm_spec

XML = (
    "<domain type='qemu'><name>vm</name><uuid>4b7e3a0e-1111-2222-3333-444455556666</uuid></domain>"
)


class Recorder:
    """A HypervisorListener keeping what it heard."""

    def __init__(self) -> None:
        self.events: list[DomainEvent] = []
        self.connections: list[bool] = []

    def on_connection(self, connected: bool) -> None:
        self.connections.append(connected)

    def on_domain_event(self, event: DomainEvent) -> None:
        self.events.append(event)


@pytest.fixture
def hv() -> FakeHypervisor:
    hv = FakeHypervisor(FakeClock())
    hv.define(XML)
    return hv


def test_set_metadata_replaces_the_agents_element_in_config_and_only_if_asked_live(
    hv: FakeHypervisor,
) -> None:
    spec = vm_spec()
    hv.set_metadata(
        "vm", metadata_payload(spec, Bookkeeping(generation=1, created_at=1.0)), live=False
    )
    hv.start("vm")
    hv.set_metadata(
        "vm", metadata_payload(spec, Bookkeeping(generation=2, created_at=1.0)), live=False
    )
    info = hv.lookup("vm")
    assert info is not None
    config, live = read_metadata(info.config_xml), read_metadata(info.live_xml)
    assert config is not None and config[1].generation == 2
    assert live is not None and live[1].generation == 1  # the running guest's copy
    hv.set_metadata(
        "vm", metadata_payload(spec, Bookkeeping(generation=3, created_at=1.0)), live=True
    )
    info = hv.lookup("vm")
    assert info is not None
    assert info.config_xml.count("virt-agent.io") == 1  # replaced, not added
    live = read_metadata(info.live_xml)
    assert live is not None and live[1].generation == 3


def test_state_transitions_emit_the_adapters_events(hv: FakeHypervisor) -> None:
    seen = Recorder()
    hv.subscribe(seen)
    hv.start("vm", paused=True)
    hv.resume("vm")
    hv.suspend("vm")
    hv.destroy("vm")
    hv.undefine("vm")
    assert [(e.event, e.detail) for e in seen.events] == [
        ("started", "booted"),
        ("suspended", "paused"),
        ("resumed", "unpaused"),
        ("suspended", "paused"),
        ("stopped", "destroyed"),
        ("undefined", "0"),
    ]
    assert hv.lookup("vm") is None
    hv.reconnect()
    assert seen.connections == [False, True]


def test_calls_the_state_forbids_fail_like_libvirts(hv: FakeHypervisor) -> None:
    with pytest.raises(FailedPrecondition, match="not running"):
        hv.shutdown("vm")
    hv.start("vm")
    with pytest.raises(FailedPrecondition, match="already running"):
        hv.start("vm")
    with pytest.raises(FailedPrecondition, match="not paused"):
        hv.resume("vm")
    with pytest.raises(NotFound):
        hv.destroy("other")


def test_a_running_domain_undefined_disappears_when_it_stops(hv: FakeHypervisor) -> None:
    hv.start("vm")
    hv.undefine("vm")
    info = hv.lookup("vm")
    assert info is not None and info.state == DomainState.RUNNING
    hv.destroy("vm")
    assert hv.lookup("vm") is None


def test_a_slow_guest_powers_off_on_the_clock(hv: FakeHypervisor) -> None:
    hv.slow_shutdown("vm", 7)
    hv.start("vm")
    hv.shutdown("vm")
    hv.clock.advance(6.9)
    info = hv.lookup("vm")
    assert info is not None and info.state == DomainState.RUNNING
    hv.clock.advance(0.1)
    info = hv.lookup("vm")
    assert info is not None and (info.state, info.reason) == (DomainState.SHUTOFF, "shutdown")


def test_the_fake_clock_moves_only_when_asked_and_fires_timers_in_order() -> None:
    clock = FakeClock()
    fired: list[tuple[str, float]] = []
    clock.call_later(3, lambda: fired.append(("b", clock.monotonic())))
    clock.call_later(1, lambda: fired.append(("a", clock.monotonic())))
    start_wall = clock.now()
    clock.sleep(5)
    assert fired == [("a", 1.0), ("b", 3.0)]
    assert clock.monotonic() == 5.0 and clock.now() == start_wall + 5
    assert clock.sleeps == [5]
