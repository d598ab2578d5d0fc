"""Keeping VMs up on the fake hypervisor: run strategies after a stop, crash-loop backoff,
and an agent restart adopting what libvirt holds."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.errors import FailedPrecondition, Unavailable
from agent.models import Phase
from agent.naming import METADATA_URI
from agent.ports import DomainState
from tests.unit.fake_node import FakeNode, make_node, vm_spec

WEB = "default_web"


def state(node: FakeNode, domain: str = WEB) -> DomainState:
    info = node.hv.lookup(domain)
    assert info is not None, domain
    return info.state


@pytest.mark.parametrize(
    ("strategy", "how", "restarted"),
    [
        ("Always", "crash", True),
        ("Always", "guest_poweroff", True),
        ("RerunOnFailure", "crash", True),
        ("RerunOnFailure", "guest_poweroff", False),
        ("Manual", "crash", False),
        ("Halted", "crash", False),
        ("Once", "crash", False),
        ("Once", "guest_poweroff", False),
    ],
)
def test_the_run_strategy_decides_whether_a_stopped_guest_starts_again(
    tmp_path: Path, strategy: str, how: str, restarted: bool
) -> None:
    node = make_node(tmp_path)
    node.service.apply(vm_spec(run_strategy=strategy))
    node.service.start("default", "web")  # Manual and Halted are created stopped
    getattr(node.hv, how)(WEB)
    stopped_at = node.clock.now()
    node.tasks.run_all()
    assert len(node.hv.calls_on(WEB, "start")) == (2 if restarted else 1)
    assert state(node) == (DomainState.RUNNING if restarted else DomainState.SHUTOFF)
    record = node.service.get("default", "web")
    if not restarted:
        assert record.status.stopped_at == stopped_at
        assert record.status.phase == (Phase.FAILED if how == "crash" else Phase.SUCCEEDED)


def test_a_crash_looping_guest_waits_longer_each_time_and_starts_over_after_a_stable_run(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path)
    node.service.apply(vm_spec(run_strategy="RerunOnFailure"))
    for _ in range(5):
        node.hv.crash(WEB)
        assert "restart-default_web" in node.tasks.run_all()
        assert state(node) == DomainState.RUNNING
    assert node.clock.sleeps == [0.0, 1.0, 2.0, 4.0, 8.0]
    node.clock.advance(60)  # up for a minute: the next crash is a new story
    node.hv.crash(WEB)
    node.tasks.run_all()
    assert node.clock.sleeps[-1] == 0.0
    assert state(node) == DomainState.RUNNING


def test_the_backoff_is_capped_at_a_minute(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    node.service.apply(vm_spec(run_strategy="Always"))
    for _ in range(9):
        node.hv.crash(WEB)
        node.tasks.run_all()
    assert node.clock.sleeps == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_a_vm_stopped_by_a_client_during_the_backoff_is_not_restarted(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    node.service.apply(vm_spec(run_strategy="Always"))
    node.hv.crash(WEB)
    node.service.stop("default", "web")  # before the queued restart runs
    node.tasks.run_all()
    assert len(node.hv.calls_on(WEB, "start")) == 1
    assert state(node) == DomainState.SHUTOFF


def test_a_restart_that_fails_is_logged_and_the_vm_stays_down_until_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node(tmp_path)
    node.service.apply(vm_spec(run_strategy="Always"))
    node.hv.crash(WEB)
    node.hv.fail_next("start", FailedPrecondition("qemu: cannot allocate memory"))
    node.tasks.run_all()
    assert "restarting default_web failed" in caplog.text
    assert state(node) == DomainState.SHUTOFF
    node.service.start("default", "web")
    assert state(node) == DomainState.RUNNING


def test_resync_adopts_the_agents_domains_and_leaves_foreign_and_corrupt_ones_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_node(tmp_path)
    first.service.apply(vm_spec("web"))
    first.service.apply(vm_spec("db", run_strategy="Manual"))
    first.hv.define("<domain type='qemu'><name>foreign</name></domain>")
    first.hv.define(
        f"<domain type='qemu'><name>broken</name><metadata><va:vm xmlns:va='{METADATA_URI}'>"
        "<va:spec>{not json</va:spec><va:state>{}</va:state></va:vm></metadata></domain>"
    )
    node = first.restarted_agent()
    calls_before = len(node.hv.calls)
    with caplog.at_level(logging.ERROR):
        node.service.resync()
    assert {(r.spec.name, r.status.phase) for r in node.vms()} == {
        ("web", Phase.RUNNING),
        ("db", Phase.STOPPED),
    }
    assert "broken has unreadable virt-agent metadata" in caplog.text
    assert node.hv.names() == {WEB, "default_db", "foreign", "broken"}
    touched = {c.name for c in node.hv.calls[calls_before:]}
    assert touched.isdisjoint({"foreign", "broken"})
    assert node.network.reconciled == [{WEB: True, "default_db": False}]
    assert node.tasks.names() == []  # web runs, db is Manual: nothing to start


def test_resync_starts_an_always_vm_that_went_down_while_the_agent_was_away(
    tmp_path: Path,
) -> None:
    first = make_node(tmp_path)
    first.service.apply(vm_spec("web"))
    first.hv.hold_events = True  # the agent is gone: nobody hears the crash
    first.hv.crash(WEB)
    node = first.restarted_agent()
    node.hv.hold_events = False
    node.service.resync()
    assert node.tasks.run_all() == ["restart-default_web"]
    assert node.clock.sleeps == [0.0]
    assert state(node) == DomainState.RUNNING


def test_resync_drops_records_of_domains_removed_behind_the_agents_back(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    node.service.apply(vm_spec("db", run_strategy="Manual"))
    node.hv.hold_events = True
    node.hv.undefine("default_db")
    assert [r.spec.name for r in node.vms()] == ["db"]  # not heard of yet
    node.service.resync()
    assert node.vms() == []


def test_a_failed_resync_is_retried_with_backoff_on_the_clock(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    node.service.apply(vm_spec("web"))
    node.service.cache.remove(WEB)  # forgotten: only the resync brings it back
    for _ in range(3):
        node.hv.fail_next("list_domains", Unavailable("libvirt went away"))
    node.hv.reconnect()  # libvirtd restarted
    assert not node.service.readiness.ready
    assert node.tasks.run_all() == ["resync"]
    assert node.clock.sleeps == [1.0, 2.0, 4.0]
    assert node.service.readiness.ready
    assert [r.spec.name for r in node.vms()] == ["web"]
