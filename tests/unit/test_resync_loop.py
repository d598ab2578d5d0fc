"""The periodic resync: its timing on the injected clock, which VMs it leaves to verbs in
flight, how it reports repairs (log line, counter) and the NetworkBroken condition."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from agent.config import ConfigError, load_settings
from agent.domain.clock import SYSTEM_CLOCK
from agent.domain.resync_loop import PeriodicResync
from agent.metrics.agent_metrics import REGISTRY
from agent.models import Phase
from agent.ports import NetworkRepair
from tests.unit.fake_clock import FakeClock
from tests.unit.fake_node import FakeNode, make_node, vm_spec
from tests.unit.test_claim_waiting import claim_vm, with_claims


def repaired(kind: str) -> float:
    return REGISTRY.get_sample_value("virt_agent_resync_repairs_total", {"kind": kind}) or 0.0


class Passes:
    """A repair callable that stops the loop after ``until`` passes."""

    def __init__(self, until: int, fail: bool = False) -> None:
        self.at: list[float] = []
        self.until = until
        self.fail = fail
        self.loop: PeriodicResync | None = None

    def __call__(self) -> tuple[NetworkRepair, ...]:
        assert self.loop is not None
        self.at.append(clock_of(self.loop).monotonic())
        if len(self.at) >= self.until:
            self.loop.stop()
        if self.fail:
            raise RuntimeError("nft is gone")
        return ()


def clock_of(loop: PeriodicResync) -> FakeClock:
    clock = loop._clock
    assert isinstance(clock, FakeClock) or clock is SYSTEM_CLOCK
    return clock  # type: ignore[return-value]


def test_a_pass_runs_every_interval_on_the_injected_clock() -> None:
    passes = Passes(until=3)
    loop = passes.loop = PeriodicResync(passes, FakeClock(), interval=60.0, ready=lambda: True)
    loop.run()  # returns once stopped; the fake clock never blocks
    assert passes.at == [60.0, 120.0, 180.0]


def test_no_pass_runs_before_the_agent_is_ready() -> None:
    clock = FakeClock()
    ready = threading.Event()
    clock.call_later(150, ready.set)  # libvirt connected and state rebuilt at 150 s
    passes = Passes(until=1)
    loop = passes.loop = PeriodicResync(passes, clock, interval=60.0, ready=ready.is_set)
    loop.run()
    assert passes.at == [180.0]


def test_a_failing_pass_is_logged_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    passes = Passes(until=2, fail=True)
    loop = passes.loop = PeriodicResync(passes, FakeClock(), interval=5.0, ready=lambda: True)
    loop.run()
    assert passes.at == [5.0, 10.0]
    assert "periodic resync failed" in caplog.text


def test_interval_zero_runs_nothing_and_stop_ends_a_real_wait() -> None:
    passes = Passes(until=1)
    off = passes.loop = PeriodicResync(passes, FakeClock(), interval=0, ready=lambda: True)
    off.start()
    assert off._thread is None
    real = passes.loop = PeriodicResync(passes, SYSTEM_CLOCK, interval=3600.0, ready=bool)
    real.start()
    real.stop()  # does not wait out the hour
    assert real._thread is None and passes.at == []


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    node = make_node(tmp_path)
    node.service.resync()
    for name in ("web", "db", "moving"):
        node.service.apply(vm_spec(name))
    node.service.apply(vm_spec("idle", run_strategy="Halted"))
    return node


def test_only_running_vms_no_verb_holds_are_repaired(node: FakeNode) -> None:
    node.service.steps.migrating.add("default_moving")
    with node.service.exclusive("default_db", "stop"):
        node.service.sync.repair_network()
    assert node.network.repaired == [{"default_web"}]  # idle is stopped


def test_each_repair_is_logged_and_counted(
    node: FakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    node.network.repairs = (
        NetworkRepair("route", "default_web", "va0123456789ab"),
        NetworkRepair("nft_table", "", "virt_agent (missing)"),
    )
    before = repaired("route"), repaired("nft_table"), repaired("neighbour")
    with caplog.at_level(logging.WARNING):
        node.service.sync.repair_network()
    assert (repaired("route"), repaired("nft_table"), repaired("neighbour")) == (
        before[0] + 1,
        before[1] + 1,
        before[2],
    )
    assert "repaired: route va0123456789ab of vm default/web" in caplog.text
    assert "repaired: nft_table virt_agent (missing)" in caplog.text


def test_nothing_off_counts_nothing(node: FakeNode, caplog: pytest.LogCaptureFixture) -> None:
    before = {kind: repaired(kind) for kind in ("route", "tap", "nft_table", "sysctl")}
    with caplog.at_level(logging.WARNING):
        node.service.sync.repair_network()
    assert {kind: repaired(kind) for kind in before} == before
    assert "repaired" not in caplog.text


def test_a_cut_off_network_shows_as_a_condition_until_it_is_plugged_again(
    node: FakeNode,
) -> None:
    node.network.broken["default_web"] = "tap va1 was deleted; restart the VM"
    node.service.sync.repair_network()
    web = node.service.get("default", "web")
    (broken,) = [c for c in web.status.conditions if c.type == "NetworkBroken"]
    assert broken.status and broken.reason == "TapDeleted" and "restart" in broken.message
    assert web.status.phase == Phase.RUNNING
    db = node.service.get("default", "db")
    assert not [c for c in db.status.conditions if c.type == "NetworkBroken"]
    node.network.broken.clear()  # e.g. a hard restart plugged it again
    node.service.sync.repair_network()
    web = node.service.get("default", "web")
    assert not [c for c in web.status.conditions if c.type == "NetworkBroken"]


def test_the_resync_interval_setting() -> None:
    assert load_settings([], environ={}).resync_interval == 60.0
    assert load_settings(["--resync-interval", "2"], environ={}).resync_interval == 2.0
    assert load_settings(["--resync-interval", "0"], environ={}).resync_interval == 0.0
    with pytest.raises(ConfigError, match="resync-interval: -1.0 is negative"):
        load_settings(["--resync-interval", "-1"], environ={})


def test_a_pending_vm_without_a_guest_is_not_measured_nor_shown_cut_off(tmp_path: Path) -> None:
    """A VM waiting for its claim is Pending with its domain shut off (stop never unplugs):
    its tap has no carrier because no QEMU holds it, which is no broken network."""
    node = with_claims(make_node(tmp_path), tmp_path / "claims")
    node.service.resync()
    node.service.apply(vm_spec("web"))
    node.service.apply(claim_vm("waiting"))
    assert node.service.get("default", "waiting").status.phase == Phase.PENDING
    node.network.broken["default_waiting"] = "tap va2 has no carrier"
    node.service.sync.repair_network()
    assert node.network.repaired == [{"default_web"}]
    waiting = node.service.get("default", "waiting")
    assert waiting.status.phase == Phase.PENDING
    assert not [c for c in waiting.status.conditions if c.type == "NetworkBroken"]
