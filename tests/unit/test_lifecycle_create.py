"""Creating and changing VMs on the fake hypervisor: nothing half-made stays behind a
failure, and a repeated request_id has no second effect."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.domain.metadata import read_metadata
from agent.errors import AlreadyExists, FailedPrecondition, InvalidSpec, NotFound
from agent.models import Phase
from agent.naming import METADATA_URI
from tests.unit.fake_node import FakeNode, make_node, vm_spec

WEB = "default_web"


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return make_node(tmp_path)


def assert_nothing_left(node: FakeNode) -> None:
    assert node.hv.names() == set()
    assert not node.vm_dir("web").exists()
    assert node.network.allocated == set()  # the allocation was given back
    assert node.vms() == []
    with pytest.raises(NotFound):
        node.service.get("default", "web")


def test_a_created_vm_carries_its_spec_and_books_in_the_domains_metadata(node: FakeNode) -> None:
    record, changed = node.service.apply(vm_spec())
    assert changed and record.status.phase == Phase.RUNNING
    info = node.hv.lookup(WEB)
    assert info is not None
    stored = read_metadata(info.config_xml)
    assert stored is not None and stored[0] == record.spec
    assert stored[1].started_at == node.clock.now() and not stored[1].halted
    live = read_metadata(info.live_xml)
    assert live is not None and live[1].generation == 1
    methods = [c.method for c in node.hv.calls_on(WEB, "define", "start", "resume")]
    assert methods == ["define", "start", "resume"]
    assert node.network.plugged == {WEB}


def test_a_define_failure_leaves_nothing_behind(node: FakeNode) -> None:
    node.hv.fail_next("define", InvalidSpec("spec", "defining domain default_web: bad XML"))
    with pytest.raises(InvalidSpec, match="bad XML"):
        node.service.apply(vm_spec())
    assert_nothing_left(node)


@pytest.mark.parametrize("failing", ["start", "resume"])
def test_a_vm_that_cannot_start_is_not_created(node: FakeNode, failing: str) -> None:
    node.hv.fail_next(failing, FailedPrecondition(f"{failing}: could not open tap"))
    with pytest.raises(FailedPrecondition, match="could not open tap"):
        node.service.apply(vm_spec())
    assert_nothing_left(node)
    if failing == "resume":  # started paused, then failed: the QEMU process was ended
        assert node.hv.calls_on(WEB, "destroy")


def test_the_same_name_can_be_created_again_after_a_failed_create(node: FakeNode) -> None:
    node.hv.fail_next("start", FailedPrecondition("qemu died"))
    with pytest.raises(FailedPrecondition):
        node.service.apply(vm_spec())
    record, changed = node.service.apply(vm_spec())
    assert changed and record.status.phase == Phase.RUNNING


def test_a_domain_not_made_by_the_agent_is_never_taken_over(node: FakeNode) -> None:
    node.hv.define(f"<domain type='qemu'><name>{WEB}</name></domain>")
    with pytest.raises(AlreadyExists, match="not managed by virt-agent"):
        node.service.apply(vm_spec())
    assert [c.method for c in node.hv.calls_on(WEB) if c.method != "lookup"] == ["define"]
    assert not node.vm_dir("web").exists()


def test_a_changed_spec_waits_for_the_running_guest_to_restart(node: FakeNode) -> None:
    node.service.apply(vm_spec())
    record, changed = node.service.apply(vm_spec(grace=30, hostname="web-2"))
    assert changed and record.status.phase == Phase.RUNNING
    assert (record.status.generation, record.status.running_generation) == (2, 1)
    assert any(c.type == "RestartRequired" and c.status for c in record.status.conditions)
    record = node.service.restart("default", "web", hard=True)
    assert (record.status.generation, record.status.running_generation) == (2, 2)


def test_a_repeated_apply_request_has_no_second_effect(node: FakeNode) -> None:
    first, changed = node.service.apply(vm_spec(), request_id="req-1")
    again, changed_again = node.service.apply(vm_spec(), request_id="req-1")
    assert changed and not changed_again
    assert again.spec.uid == first.spec.uid
    assert len(node.hv.calls_on(WEB, "define")) == 1


def test_a_repeated_stop_request_presses_the_button_once(node: FakeNode) -> None:
    node.service.apply(vm_spec())
    node.service.stop("default", "web", request_id="req-stop")
    node.service.start("default", "web")
    record = node.service.stop("default", "web", request_id="req-stop")
    assert len(node.hv.calls_on(WEB, "shutdown")) == 1
    assert record.status.phase == Phase.RUNNING  # the replay changed nothing


def test_a_request_id_reused_for_another_call_is_refused(node: FakeNode) -> None:
    node.service.apply(vm_spec(), request_id="req-1")
    with pytest.raises(InvalidSpec, match="req-1 was already used for apply default_web"):
        node.service.pause("default", "web", request_id="req-1")
    assert node.service.get("default", "web").status.phase == Phase.RUNNING


def test_a_run_strategy_change_to_halted_stops_and_back_to_always_starts(node: FakeNode) -> None:
    node.service.apply(vm_spec())
    record, _ = node.service.apply(vm_spec(run_strategy="Halted"))
    assert record.status.phase == Phase.SUCCEEDED and record.books.halted
    assert [c.method for c in node.hv.calls_on(WEB, "shutdown")] == ["shutdown"]
    record, _ = node.service.apply(vm_spec(run_strategy="Always"))
    assert record.status.phase == Phase.RUNNING and not record.books.halted


def test_delete_removes_files_and_record_even_when_unplugging_fails(
    node: FakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    node.service.apply(vm_spec())
    node.network.unplug_error = RuntimeError("nft is busy")
    node.service.delete("default", "web")
    assert "unplugging default_web failed" in caplog.text
    assert node.hv.names() == set()
    assert not node.vm_dir("web").exists()
    assert node.vms() == []


def test_verbs_refuse_a_domain_whose_metadata_cannot_be_read(node: FakeNode) -> None:
    node.hv.define(
        f"<domain type='qemu'><name>{WEB}</name><metadata><va:vm xmlns:va='{METADATA_URI}'>"
        "<va:spec>[]</va:spec><va:state>{}</va:state></va:vm></metadata></domain>"
    )
    with pytest.raises(FailedPrecondition, match="default_web: unreadable virt-agent metadata"):
        node.service.apply(vm_spec())
    assert [c.method for c in node.hv.calls_on(WEB) if c.method != "lookup"] == ["define"]
