"""An agent killed in the middle of starting a VM: the restarted agent finishes the start
(once), leaves alone what a user did, and logs what it repaired."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from agent.models import Phase
from agent.ports import DomainState, NetworkRepair
from tests.unit.fake_hypervisor import AgentKilled
from tests.unit.fake_node import FakeNode, make_node, vm_spec

WEB = "default_web"


def state(node: FakeNode, domain: str = WEB) -> DomainState:
    info = node.hv.lookup(domain)
    assert info is not None, domain
    return info.state


def restart_and_recover(first: FakeNode) -> tuple[FakeNode, list[str]]:
    """A new agent process on the same libvirt: resync, then the work it queued."""
    node = first.restarted_agent()
    node.service.resync()
    return node, node.tasks.run_all()


@pytest.mark.parametrize("strategy", ["Once", "Always", "RerunOnFailure"])
def test_a_guest_left_paused_between_create_and_resume_is_resumed_by_the_restarted_agent(
    tmp_path: Path, strategy: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_node(tmp_path)
    first.hv.kill_agent_at("resume")
    with pytest.raises(AgentKilled):
        first.service.apply(vm_spec(run_strategy=strategy))
    assert state(first) == DomainState.PAUSED  # created paused, never resumed

    with caplog.at_level(logging.INFO):
        node, ran = restart_and_recover(first)

    assert ran == [f"finish-start-{WEB}"]
    assert state(node) == DomainState.RUNNING
    assert len(node.hv.calls_on(WEB, "start")) == 1  # resumed, not booted a second time
    assert WEB in node.network.plugged  # plumbed again by the new agent before the resume
    record = node.service.get("default", "web")
    assert record.status.phase == Phase.RUNNING
    assert not record.books.starting
    assert "repaired: vm default/web: it was left paused between create and resume" in caplog.text
    # Done for good: the next resync finds nothing to repair.
    node.service.resync()
    assert node.tasks.run_all() == []


def test_a_guest_a_user_paused_stays_paused_after_an_agent_restart(tmp_path: Path) -> None:
    first = make_node(tmp_path)
    first.service.apply(vm_spec(run_strategy="Always"))
    first.service.pause("default", "web")

    node, ran = restart_and_recover(first)

    assert ran == []
    assert state(node) == DomainState.PAUSED
    assert len(node.hv.calls_on(WEB, "resume")) == 1  # the one of the first start only
    assert node.service.get("default", "web").status.phase == Phase.PAUSED


@pytest.mark.parametrize("strategy", ["Once", "Always", "RerunOnFailure"])
def test_a_start_killed_before_the_guest_was_created_is_finished(
    tmp_path: Path, strategy: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A VM created to run is defined with its start mark (one libvirt call fewer per start):
    # an agent killed before the guest is created leaves a VM whose intent is on record.
    first = make_node(tmp_path)
    first.hv.kill_agent_at("start")  # the first call after the define
    with pytest.raises(AgentKilled):
        first.service.apply(vm_spec(run_strategy=strategy))
    assert state(first) == DomainState.SHUTOFF
    assert first.service.get("default", "web").status.phase == Phase.PENDING
    assert first.hv.calls_on(WEB, "set_metadata") == []  # the mark came with the define

    with caplog.at_level(logging.INFO):
        node, ran = restart_and_recover(first)

    assert ran == [f"finish-start-{WEB}"]
    assert state(node) == DomainState.RUNNING
    assert len(node.hv.calls_on(WEB, "start")) == 2  # the killed call never happened
    assert "repaired: vm default/web: its start was interrupted" in caplog.text
    assert not node.service.get("default", "web").books.starting


def test_a_once_vm_that_ran_is_not_started_again_by_a_restarted_agent(tmp_path: Path) -> None:
    first = make_node(tmp_path)
    first.service.apply(vm_spec(run_strategy="Once"))
    first.hv.guest_poweroff(WEB)
    first.tasks.run_all()

    node, ran = restart_and_recover(first)

    assert ran == []
    assert state(node) == DomainState.SHUTOFF
    assert node.service.get("default", "web").status.phase == Phase.SUCCEEDED
    # Applying the same VMI again changes nothing either: it ran once.
    _, changed = node.service.apply(vm_spec(run_strategy="Once"))
    assert not changed
    assert len(node.hv.calls_on(WEB, "start")) == 1


def test_a_vm_stopped_before_its_interrupted_start_is_finished_stays_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_node(tmp_path)
    first.hv.kill_agent_at("resume")
    with pytest.raises(AgentKilled):
        first.service.apply(vm_spec(run_strategy="Once"))
    node = first.restarted_agent()
    node.service.resync()
    node.service.stop("default", "web", grace_period=0)  # before the resync's work runs

    with caplog.at_level(logging.INFO):
        node.tasks.run_all()

    assert state(node) == DomainState.SHUTOFF
    assert len(node.hv.calls_on(WEB, "start")) == 1
    assert "repaired" not in caplog.text
    assert node.service.get("default", "web").status.phase == Phase.STOPPED


def test_a_manual_vm_applied_again_as_once_starts_if_it_never_ran(tmp_path: Path) -> None:
    """A VMI an older vmctl made Manual, and never got to start, runs once applied as Once."""
    node = make_node(tmp_path)
    node.service.apply(vm_spec(run_strategy="Manual"))
    assert state(node) == DomainState.SHUTOFF

    _, changed = node.service.apply(vm_spec(run_strategy="Once"))

    assert changed
    assert state(node) == DomainState.RUNNING


def test_the_network_is_reconciled_before_recovery_starts_anything(tmp_path: Path) -> None:
    """The reconcile removes the plumbing of VMs it sees stopped: a start racing it on
    another thread would boot QEMU on a tap deleted under it."""
    first = make_node(tmp_path)
    first.hv.kill_agent_at("resume")
    with pytest.raises(AgentKilled):
        first.service.apply(vm_spec("web", run_strategy="Once"))
    first.hv.kill_agent_at("start")
    with pytest.raises(AgentKilled):
        first.service.apply(vm_spec("db", run_strategy="Once"))
    node = first.restarted_agent()
    queued_at_reconcile: list[list[str]] = []
    reconcile = node.network.reconcile

    def recording(vms: dict[str, Any]) -> tuple[NetworkRepair, ...]:
        queued_at_reconcile.append(node.tasks.names())
        return reconcile(vms)

    node.network.reconcile = recording  # type: ignore[method-assign]
    node.service.resync()

    assert queued_at_reconcile == [[]]
    assert sorted(node.tasks.names()) == ["finish-start-default_db", f"finish-start-{WEB}"]


def kill_agent_after_the_resume(first: FakeNode) -> None:
    """The agent dies right after the guest runs, before it clears the starting mark."""
    resume = first.hv.resume

    def resume_then_die(name: str) -> None:
        resume(name)
        first.hv.resume = resume  # type: ignore[method-assign]  # (once)
        first.hv.kill_agent_at("set_metadata")

    first.hv.resume = resume_then_die  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("strategy", "starts"), [("Once", 1), ("Manual", 1), ("RerunOnFailure", 2), ("Always", 2)]
)
def test_a_guest_that_crashed_before_its_start_was_recorded_is_never_booted_twice_by_recovery(
    tmp_path: Path, strategy: str, starts: int, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_node(tmp_path)
    kill_agent_after_the_resume(first)
    with pytest.raises(AgentKilled):
        first.service.apply(vm_spec(run_strategy=strategy))
        first.service.start("default", "web")  # (Manual: the user's start)
    first.hv.crash(WEB)  # while no agent runs

    with caplog.at_level(logging.INFO):
        node, ran = restart_and_recover(first)
        ran += node.tasks.run_all()

    # Recovery only clears the mark: the run strategy alone decides about a second run.
    assert len(node.hv.calls_on(WEB, "start")) == starts
    assert "repaired: vm default/web: it ran and stopped before its start was recorded" in (
        caplog.text
    )
    record = node.service.get("default", "web")
    assert not record.books.starting and not record.books.resumed
    if starts == 1:
        assert state(node) == DomainState.SHUTOFF
        assert record.status.phase == Phase.FAILED and record.status.reason == "Crashed"
    else:
        assert state(node) == DomainState.RUNNING
    node.service.resync()
    assert node.tasks.run_all() == []
