"""The source's migration flow on the fake hypervisor: refusals before anything is made,
what libvirt is asked for, a failed post-copy, and an agent restarted mid-way finding its
migrations again (stored records + libvirt's job and domain state)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import AgentError, FailedPrecondition, Unavailable
from agent.migration.policy import MigrationOptions
from agent.migration.records import MigrationBook, MigrationRecord, State
from agent.migration.service import Migrations
from agent.migration.source import OutgoingMigrations
from agent.migration.store import MigrationStore
from agent.migration.target import IncomingMigrations
from agent.models import Phase
from agent.ports import JobSample
from tests.testbed.wait import wait_for
from tests.unit.fake_migrator import FakeMigrator, FakeTargets
from tests.unit.fake_node import FakeNode, make_node, vm_spec

WEB = "default_web"


class Source:
    """node-a with a running VM ``web``, its migrations and their store."""

    def __init__(self, node: FakeNode, *, tls: bool = False) -> None:
        self.node = node
        self.migrator = FakeMigrator(node.hv)
        self.targets = FakeTargets()
        self.store = MigrationStore(str(node.state_dir / "migrations"))
        self.book = MigrationBook(store=self.store)
        self.outgoing = OutgoingMigrations(
            node.service, self.migrator, self.targets, self.book, tls=tls, poll_interval=0.01
        )
        incoming = IncomingMigrations(node.service, self.migrator, self.book, address="192.0.2.11")
        self.migrations = Migrations(self.book, self.outgoing, incoming)

    def migrate(self, **options: object) -> MigrationRecord:
        return self.migrations.migrate(
            "default",
            "web",
            "192.0.2.12:7443",
            MigrationOptions(**options),  # type: ignore[arg-type]
        )

    def ended(self, migration_id: str) -> MigrationRecord:
        return wait_for(lambda: (r := self.book.get(migration_id)).ended and r, 10, 0.01, "the end")

    def restarted(self) -> Source:
        """A new agent process on the same hypervisor and state dir."""
        return Source(self.node.restarted_agent(), tls=self.outgoing.tls)


@pytest.fixture
def source(tmp_path: Path) -> Source:
    node = make_node(tmp_path)
    node.service.apply(vm_spec())
    node.tasks.run_all()
    assert node.service.get("default", "web").status.phase == Phase.RUNNING
    return Source(node)


@pytest.mark.parametrize(
    ("refusal", "kind", "words"),
    [
        (FailedPrecondition("target agent 192.0.2.12:7443: checking the migration: "
                            "FAILED_PRECONDITION: node node-b cannot take vm default/web: it "
                            "needs 128 MiB"), FailedPrecondition, "cannot take"),
        (Unavailable("target agent 192.0.2.12:7443: checking the migration: UNAVAILABLE: "
                     "connection refused"), Unavailable, "UNAVAILABLE"),
    ],
)  # fmt: skip
def test_a_target_that_refuses_or_is_unreachable_fails_the_call_and_nothing_changes(
    source: Source, refusal: AgentError, kind: type[AgentError], words: str
) -> None:
    source.targets.refusal = refusal
    with pytest.raises(kind, match=words):
        source.migrate(post_copy=True)
    assert source.targets.prepared == [
        {"id": source.targets.prepared[0]["id"], "validate_only": True, "post_copy": True,
         "digests": {}}
    ]  # fmt: skip
    assert source.book.list() == [] and source.store.load() == []
    assert not source.migrator.started
    assert source.node.service.get("default", "web").status.phase == Phase.RUNNING


def test_a_target_that_is_this_node_fails_the_call(source: Source) -> None:
    source.targets.node_name = "node-fake"  # the source's own name
    with pytest.raises(FailedPrecondition, match="node-fake, the VM's own node"):
        source.migrate()
    assert source.book.list() == [] and not source.migrator.started


@pytest.mark.parametrize(
    ("own_tls", "target_uri", "tls"),
    [
        (False, "qemu+tcp://192.0.2.12/system", False),
        (True, "qemu+tcp://192.0.2.12/system", True),
        (False, "qemu+tls://192.0.2.12/system", True),
    ],
)
def test_libvirt_gets_the_job_with_tls_when_either_node_asks(
    tmp_path: Path, own_tls: bool, target_uri: str, tls: bool
) -> None:
    node = make_node(tmp_path)
    node.service.apply(vm_spec())
    node.tasks.run_all()
    source = Source(node, tls=own_tls)
    source.targets.libvirt_uri = target_uri
    started = source.migrate()
    assert source.migrator.running.wait(10)
    job = source.migrator.started[0]
    assert job.tls is tls and job.libvirt_uri == target_uri
    source.migrator.succeed(WEB)
    assert source.ended(started.id).state == State.SUCCEEDED
    assert source.targets.prepared[1]["validate_only"] is False


def test_a_failed_post_copy_fails_the_migration_and_the_vm_with_a_clear_reason(
    source: Source,
) -> None:
    started = source.migrate(post_copy=True)
    assert source.migrator.running.wait(10)
    source.migrator.job(WEB, JobSample(data_total=1 << 20, data_remaining=1 << 19, post_copy=True))
    wait_for(lambda: source.book.get(started.id).state == State.POST_COPY, 10, 0.01, "post-copy")
    source.migrator.fail_in_post_copy(WEB, "migration stream: connection reset")
    final = source.ended(started.id)
    assert final.state == State.FAILED
    assert final.message.startswith("post-copy failed: migration stream: connection reset")
    assert "split between node-fake and node-b" in final.message
    vm = source.node.service.get("default", "web")
    assert (vm.status.phase, vm.status.reason) == (Phase.FAILED, "PostCopyFailed")
    assert source.targets.finished[-1][1] is False


def test_an_ordinary_failure_leaves_the_vm_running(source: Source) -> None:
    started = source.migrate()
    assert source.migrator.running.wait(10)
    source.migrator.fail(WEB, "Postcopy is not supported")
    final = source.ended(started.id)
    assert final.state == State.FAILED and final.message == "Postcopy is not supported"
    running_again(source)


def running_again(source: Source) -> None:
    """The VM shows Running again (the migration's record ends just before the VM's lock
    and phase are given back)."""
    wait_for(
        lambda: source.node.service.get("default", "web").status.phase == Phase.RUNNING,
        10, 0.01, "phase Running",
    )  # fmt: skip


def running_migration(source: Source) -> MigrationRecord:
    """A migration whose libvirt job runs; then the agent process 'dies' (its threads are
    left blocked; the restarted agent only sees the store and the fake hypervisor)."""
    started = source.migrate()
    assert source.migrator.running.wait(10)
    wait_for(lambda: source.book.get(started.id).state == State.RUNNING, 10, 0.01, "running")
    return started


def test_records_are_read_back_after_a_restart(source: Source) -> None:
    started = source.migrate()
    assert source.migrator.running.wait(10)
    source.migrator.succeed(WEB)
    source.ended(started.id)
    restarted = source.restarted()
    restarted.migrations.recover()
    back = restarted.migrations.get(started.id)
    assert back.state == State.SUCCEEDED and back.target_node == "node-b"
    assert back.options == MigrationOptions() and back.downtime_ms == 42
    assert [r.id for r in restarted.migrations.list()] == [started.id]


def test_a_restarted_source_follows_the_job_and_cleans_up_after_the_guest_left(
    source: Source,
) -> None:
    started = running_migration(source)
    restarted = source.restarted()
    restarted.migrator.job(WEB, JobSample(data_total=4 << 20, data_processed=1 << 20))
    restarted.migrations.recover()
    restarted.node.service.resync()
    # libvirt still migrates it: followed, shown Migrating, progress published
    wait_for(
        lambda: restarted.book.get(started.id).progress.data_processed == 1 << 20,
        10, 0.01, "the followed job's progress",
    )  # fmt: skip
    wait_for(
        lambda: restarted.node.service.get("default", "web").status.phase == Phase.MIGRATING,
        10, 0.01, "phase Migrating",
    )  # fmt: skip
    restarted.migrator.succeed(WEB)  # the job ends with the guest gone from here
    final = restarted.ended(started.id)
    assert final.state == State.SUCCEEDED, final.message
    assert restarted.targets.finished == [(started.id, True, "")]
    assert WEB not in restarted.node.hv.names()
    assert not restarted.node.vm_dir("web").exists()
    assert WEB not in restarted.node.network.plugged
    with pytest.raises(AgentError):
        restarted.node.service.get("default", "web")
    source.migrator.fail(WEB, "the old process is gone")  # (unblock its thread)


def test_a_restarted_source_whose_job_ended_with_the_guest_here_fails_it_and_keeps_the_vm(
    source: Source,
) -> None:
    started = running_migration(source)
    restarted = source.restarted()  # libvirt's job is gone (aborted with the client)
    restarted.migrations.recover()
    restarted.node.service.resync()
    final = restarted.ended(started.id)
    assert final.state == State.FAILED
    assert "agent restarted during the migration" in final.message
    assert "still runs on node-fake" in final.message
    assert restarted.targets.finished == [(started.id, False, final.message)]
    running_again(restarted)  # one copy, here, untouched
    assert restarted.node.vm_dir("web").exists()
    source.migrator.fail(WEB, "the old process is gone")


def test_a_restarted_source_marks_a_broken_post_copy_failed(source: Source) -> None:
    started = running_migration(source)
    hv = source.node.hv
    with hv._lock:
        dom = hv._domains[WEB]
        dom.state, dom.reason = dom.state.PAUSED, "postcopy_failed"
    restarted = source.restarted()
    restarted.migrations.recover()
    restarted.node.service.resync()
    final = restarted.ended(started.id)
    assert final.state == State.FAILED and final.message.startswith("post-copy failed")
    vm = restarted.node.service.get("default", "web")
    assert (vm.status.phase, vm.status.reason) == (Phase.FAILED, "PostCopyFailed")
    source.migrator.fail(WEB, "the old process is gone")


class Target:
    """node-b's incoming side over its store."""

    def __init__(self, node: FakeNode) -> None:
        self.node = node
        self.book = MigrationBook(store=MigrationStore(str(node.state_dir / "migrations")))
        self.incoming = IncomingMigrations(
            node.service, FakeMigrator(node.hv), self.book, address="192.0.2.12"
        )
        self.incoming.follow_interval = 0.01
        self.incoming.arrival_patience = 0.3
        outgoing = OutgoingMigrations(node.service, FakeMigrator(node.hv), FakeTargets(), self.book)
        self.migrations = Migrations(self.book, outgoing, self.incoming)


def prepared_target(source: Source, tmp_path: Path) -> tuple[Target, str]:
    """node-b prepared for ``web`` from ``source``; then its agent restarts."""
    from agent.domain.metadata import metadata_payload

    node_b = make_node(tmp_path / "b")
    _, spec, books = source.node.service.steps.require(WEB)
    target = Target(node_b)
    answer = target.migrations.prepare(
        "m-1", metadata_payload(spec, books), "node-a", spec.memory_bytes, vm=("default", "web")
    )
    assert answer.libvirt_uri == "qemu+tcp://192.0.2.12/system"
    assert node_b.vm_dir("web").exists()
    return Target(node_b.restarted_agent()), answer.domain_xml


def test_a_restarted_target_adopts_the_guest_that_arrives(source: Source, tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    target, domain_xml = prepared_target(source, tmp_path)
    target.migrations.recover()
    target.node.service.resync()  # (the restart's first resync keeps the prepared folder)
    assert target.node.vm_dir("web").exists()
    assert target.book.get("m-1").state == State.RUNNING
    target.node.hv.define(domain_xml)  # libvirt brings the guest in
    target.node.hv.start(WEB)
    final = wait_for(lambda: (r := target.book.get("m-1")).ended and r, 10, 0.01, "adoption")
    assert final.state == State.SUCCEEDED and final.downtime_ms == 42
    assert target.node.service.get("default", "web").status.phase == Phase.RUNNING


def test_a_restarted_target_removes_preparations_no_guest_came_for(
    source: Source, tmp_path: Path
) -> None:
    (tmp_path / "b").mkdir()
    target, _ = prepared_target(source, tmp_path)
    target.migrations.recover()
    target.node.service.resync()
    final = wait_for(lambda: (r := target.book.get("m-1")).ended and r, 10, 0.01, "cleanup")
    assert final.state == State.FAILED and "never came" in final.message
    assert not target.node.vm_dir("web").exists()
    assert WEB not in target.node.hv.names()


def test_a_restarted_source_keeps_a_guest_that_crashed_during_the_migration(
    source: Source,
) -> None:
    started = running_migration(source)
    source.node.hv.crash(WEB)  # libvirt's job ends with it; the domain stays defined, shut off
    source.migrator.job(WEB, None)
    restarted = source.restarted()
    restarted.migrations.recover()
    restarted.node.service.resync()
    final = restarted.ended(started.id)
    assert final.state == State.FAILED
    assert "shut off on node-fake (crashed)" in final.message and "did not move" in final.message
    assert restarted.targets.finished == [(started.id, False, final.message)]
    assert WEB in restarted.node.hv.names()  # not undefined: the only copy
    assert restarted.node.vm_dir("web").exists()
    assert restarted.node.service.get("default", "web").status.phase != Phase.RUNNING
    source.migrator.fail(WEB, "the old process is gone")


def test_a_restarted_source_keeps_a_vm_stopped_while_its_migration_was_pending(
    source: Source,
) -> None:
    for _ in range(2):  # every outbound slot is taken: the migration waits, Pending
        assert source.outgoing._slots.acquire(blocking=False)
    started = source.migrate()
    assert source.book.get(started.id).state == State.PENDING
    source.node.service.stop("default", "web")  # the VM lock is free while Pending
    source.node.tasks.run_all()
    assert source.node.hv.lookup(WEB) is not None
    restarted = source.restarted()
    restarted.migrations.recover()
    restarted.node.service.resync()
    final = restarted.ended(started.id)
    assert final.state == State.FAILED and "before the migration started" in final.message
    assert restarted.targets.finished == [(started.id, False, final.message)]
    assert WEB in restarted.node.hv.names()
    assert restarted.node.vm_dir("web").exists()
    assert restarted.node.service.get("default", "web").status.phase != Phase.MIGRATING
    assert not restarted.migrator.started


def test_a_restarted_source_rides_out_transient_errors_reading_libvirts_job(
    source: Source,
) -> None:
    started = running_migration(source)
    restarted = source.restarted()
    restarted.migrator.job(WEB, JobSample(data_total=4 << 20, data_processed=1 << 20))
    lock_timeout = FailedPrecondition(
        "reading the migration job of domain default_web: Timed out during operation: "
        "cannot acquire state change lock"
    )
    restarted.migrator.stats_errors = [lock_timeout] * 3
    restarted.migrations.recover()
    wait_for(lambda: not restarted.migrator.stats_errors, 10, 0.01, "the errors read")
    wait_for(
        lambda: restarted.book.get(started.id).progress.data_processed == 1 << 20,
        10, 0.01, "the followed job's progress",
    )  # fmt: skip
    assert not restarted.book.get(started.id).ended  # still following libvirt's job
    restarted.migrator.succeed(WEB)
    assert restarted.ended(started.id).state == State.SUCCEEDED
    source.migrator.fail(WEB, "the old process is gone")


def test_a_restarted_source_gives_up_on_lasting_errors_without_touching_the_vm(
    source: Source,
) -> None:
    started = running_migration(source)
    restarted = source.restarted()
    ticks = iter(range(0, 10_000, 10))  # the injected clock: 10 s per read
    restarted.outgoing.monotonic = lambda: float(next(ticks))
    restarted.migrator.stats_errors = [FailedPrecondition("internal error: bad job")] * 100
    restarted.migrations.recover()
    final = restarted.ended(started.id)
    assert final.state == State.FAILED and "kept failing" in final.message
    assert "internal error: bad job" in final.message
    assert WEB in restarted.node.hv.names() and restarted.node.vm_dir("web").exists()
    source.migrator.fail(WEB, "the old process is gone")
