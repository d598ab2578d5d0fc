"""The target's PrepareMigrationTarget under retries and load: a repeated call with the same
id (the peer client retries on UNAVAILABLE) gets the first call's answer and takes no second
slot; memory promised to prepared migrations counts against the next one."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.domain.metadata import metadata_payload
from agent.errors import Conflict, FailedPrecondition
from agent.migration.ports import PreparedTarget
from agent.migration.records import MigrationBook, State
from agent.migration.target import IncomingMigrations
from agent.ports import HostFacts
from tests.unit.fake_hypervisor import Hold
from tests.unit.fake_migrator import FakeMigrator
from tests.unit.fake_node import FakeNode, make_node, vm_spec


class _Host:
    def __init__(self, memory_bytes: int) -> None:
        self.memory_bytes = memory_bytes

    def facts(self) -> HostFacts:
        return HostFacts("node-b", 2, self.memory_bytes, "cpu")


@pytest.fixture
def source(tmp_path: Path) -> FakeNode:
    (tmp_path / "a").mkdir()
    node = make_node(tmp_path / "a")
    for name in ("web", "db"):
        node.service.apply(vm_spec(name))
    node.tasks.run_all()
    return node


def incoming_on(tmp_path: Path, **options: object) -> IncomingMigrations:
    (tmp_path / "b").mkdir()
    node = make_node(tmp_path / "b")
    incoming = IncomingMigrations(
        node.service, FakeMigrator(node.hv), MigrationBook(), address="192.0.2.12", **options
    )  # type: ignore[arg-type]
    incoming.follow_interval = 0.01
    incoming.arrival_patience = 5.0  # (its followers end with the test)
    return incoming


def prepare(
    incoming: IncomingMigrations, source: FakeNode, migration_id: str, name: str = "web"
) -> PreparedTarget:
    _, spec, books = source.service.steps.require(f"default_{name}")
    return incoming.prepare(
        migration_id, metadata_payload(spec, books), "node-a", spec.memory_bytes,
        vm=("default", name),
    )  # fmt: skip


def slow_prepare(incoming: IncomingMigrations, source: FakeNode) -> tuple[Hold, Future[object]]:
    """m-1 prepared on a thread, held in its plug (a slow ``_make_ready``)."""
    hold = Hold()
    incoming.service.network.plug_hold = hold  # type: ignore[attr-defined]
    first = ThreadPoolExecutor(1).submit(prepare, incoming, source, "m-1")
    assert hold.reached.wait(10)
    return hold, first  # type: ignore[return-value]


def test_a_retried_prepare_gets_the_first_answer_and_takes_no_second_slot(
    source: FakeNode, tmp_path: Path
) -> None:
    incoming = incoming_on(tmp_path, max_inbound=1)
    followers = [t.name for t in threading.enumerate()].count("incoming-default_web")
    hold, first = slow_prepare(incoming, source)
    retried = ThreadPoolExecutor(1).submit(prepare, incoming, source, "m-1")
    hold.release()
    assert retried.result(10) == first.result(10)
    assert [r.id for r in incoming.book.list()] == ["m-1"]
    assert [t.name for t in threading.enumerate()].count("incoming-default_web") == followers + 1
    incoming.finish("m-1", succeeded=False, message="the source gave up")
    assert incoming.book.get("m-1").state == State.FAILED
    # its one slot is free again: the next migration is taken
    assert prepare(incoming, source, "m-2").node_name == "node-fake"


def test_a_retried_prepare_of_one_that_fails_is_aborted_and_the_slot_freed(
    source: FakeNode, tmp_path: Path
) -> None:
    incoming = incoming_on(tmp_path, max_inbound=1)
    network = incoming.service.network
    network.plug_error = FailedPrecondition("tap: no such device")  # type: ignore[attr-defined]
    hold, first = slow_prepare(incoming, source)
    retried = ThreadPoolExecutor(1).submit(prepare, incoming, source, "m-1")
    hold.release()
    with pytest.raises(Conflict, match="preparation failed or ended"):
        retried.result(10)
    with pytest.raises(FailedPrecondition, match="tap: no such device"):
        first.result(10)
    assert prepare(incoming, source, "m-2").node_name == "node-fake"


def test_memory_promised_to_a_prepared_migration_counts_against_the_next(
    source: FakeNode, tmp_path: Path
) -> None:
    incoming = incoming_on(tmp_path, host=_Host(200 << 20))  # room for one 128 MiB guest
    prepare(incoming, source, "m-1", "web")
    with pytest.raises(FailedPrecondition, match="cannot take vm default/db: it needs 128 MiB"):
        prepare(incoming, source, "m-2", "db")
    assert incoming.book.find("m-2") is None
