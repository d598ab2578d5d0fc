"""Backpressure: with the agent's long-call slots all taken, more long calls are refused at
once (RESOURCE_EXHAUSTED), while health checks and reads keep answering."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.api._gen.virtagent.v1 import migration_service_pb2 as mpb
from agent.api._gen.virtagent.v1 import migration_service_pb2_grpc as mgrpc
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from agent.api.migrations import MIGRATION_CALLS
from agent.errors import Unavailable
from tests.api.conftest import Agent, running_agent
from tests.api.test_vm_api import apply, code_of, vm_doc
from tests.testbed.wait import wait_for

WEB = {"namespace": "default", "name": "web"}


@pytest.fixture
def busy_agent(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> Iterator[Agent]:
    """The ``agent`` with every long-call slot taken (see ``_occupied``)."""
    with _occupied(agent, monkeypatch):
        yield agent


@contextlib.contextmanager
def _occupied(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every mutating-call slot held by a Start that takes long (injected), every stream slot
    by an open watch."""
    apply(agent, vm_doc(run_strategy="Halted"))
    release, started = threading.Event(), threading.Semaphore(0)
    real_start = agent.service.start

    def slow_start(namespace: str, name: str, request_id: str = "") -> Any:
        started.release()
        release.wait(30)
        return real_start(namespace, name, request_id)

    monkeypatch.setattr(agent.service, "start", slow_start)
    servicer = agent.service_servicer
    starts = [
        agent.vms.StartVirtualMachine.future(pb.StartVirtualMachineRequest(**WEB))
        for _ in range(servicer.slow_calls.limit)
    ]
    watches = [
        agent.vms.WatchVirtualMachines(pb.WatchVirtualMachinesRequest())
        for _ in range(servicer.streams.limit)
    ]
    try:
        for _ in starts:
            assert started.acquire(timeout=10)
        for watch in watches:
            assert next(watch).type == pb.EVENT_TYPE_ADDED  # open and counted
        yield
    finally:
        release.set()
        for watch in watches:
            watch.cancel()
        for start in starts:
            start.exception(timeout=30)


def _healthy(agent: Agent) -> bool:
    reply = health_pb2_grpc.HealthStub(agent.channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=10
    )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


MUTATING: dict[str, Callable[[Agent], object]] = {
    "apply": lambda a: apply(a, vm_doc("other", run_strategy="Halted")),
    "start": lambda a: a.vms.StartVirtualMachine(pb.StartVirtualMachineRequest(**WEB)),
    "stop": lambda a: a.vms.StopVirtualMachine(pb.StopVirtualMachineRequest(**WEB)),
    "restart": lambda a: a.vms.RestartVirtualMachine(pb.RestartVirtualMachineRequest(**WEB)),
    "pause": lambda a: a.vms.PauseVirtualMachine(pb.PauseVirtualMachineRequest(**WEB)),
    "resume": lambda a: a.vms.ResumeVirtualMachine(pb.ResumeVirtualMachineRequest(**WEB)),
    "delete": lambda a: a.vms.DeleteVirtualMachine(pb.DeleteVirtualMachineRequest(**WEB)),
}


@pytest.mark.parametrize("verb", sorted(MUTATING))
def test_every_mutating_call_past_the_limit_is_refused_at_once(
    busy_agent: Agent, verb: str
) -> None:
    code, details = code_of(lambda: MUTATING[verb](busy_agent))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "mutating calls" in details and "retry later" in details
    get = pb.GetVirtualMachineRequest(**WEB)
    assert busy_agent.vms.GetVirtualMachine(get, timeout=10).vm.metadata.name == "web"
    assert {d.name for d in busy_agent.hv.list_domains()} == {"default_web"}  # nothing done


def test_more_streams_are_refused_migration_watches_too(busy_agent: Agent) -> None:
    request = pb.WatchVirtualMachinesRequest()
    code, details = code_of(lambda: next(busy_agent.vms.WatchVirtualMachines(request)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "watch streams" in details
    migrations = mgrpc.MigrationServiceStub(busy_agent.channel)
    watch = mpb.WatchMigrationRequest(migration_id="m-1")
    code, details = code_of(lambda: next(migrations.WatchMigration(watch)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "watch streams" in details


def test_health_and_reads_all_answer_while_every_long_call_slot_is_taken(
    busy_agent: Agent,
) -> None:
    get = pb.GetVirtualMachineRequest(**WEB)
    calls: list[Callable[[], object]] = []
    for _ in range(20):
        calls.append(lambda: _healthy(busy_agent))
        calls.append(lambda: busy_agent.vms.GetVirtualMachine(get, timeout=10).vm.metadata.name)
        calls.append(
            lambda: len(busy_agent.vms.ListVirtualMachines(pb.ListVirtualMachinesRequest()).vms)
        )
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        answers = list(pool.map(lambda call: call(), calls))
    assert answers == [True, "web", 1] * 20


def test_past_the_limit_of_calls_in_progress_only_health_checks_are_let_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_agent(tmp_path, max_calls=8) as agent, _occupied(agent, monkeypatch):
        # 4 slow Starts and 4 watches in progress: the agent's limit of 8 calls.
        get = pb.GetVirtualMachineRequest(**WEB)
        code, details = code_of(lambda: agent.vms.GetVirtualMachine(get, timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details == "8 calls are in progress or waiting on this agent, its limit; retry later"
        assert all(_healthy(agent) for _ in range(20))
    # (Once the calls ended, Gets are let in again: see the other tests of this file.)


def _answering(agent: Agent) -> None:
    """Health checks and reads answer at once (they found a thread)."""
    assert _healthy(agent)
    get = pb.GetVirtualMachineRequest(**WEB)
    assert agent.vms.GetVirtualMachine(get, timeout=10).vm.metadata.name == "web"


def test_health_watches_count_as_streams_and_leave_threads_for_checks(agent: Agent) -> None:
    apply(agent, vm_doc(run_strategy="Halted"))
    health = health_pb2_grpc.HealthStub(agent.channel)
    many = agent.service_servicer.streams.limit + 40  # more than the whole thread pool
    watches = [
        health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20) for _ in range(many)
    ]
    try:
        answers = []
        for watch in watches:
            try:
                answers.append(next(watch).status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.RpcError as exc:
                answers.append(exc.code().name)
        assert answers.count(True) == agent.service_servicer.streams.limit
        assert set(answers) == {True, "RESOURCE_EXHAUSTED"}
        _answering(agent)
    finally:
        for watch in watches:
            watch.cancel()


def _held_migrations(
    agent: Agent, monkeypatch: pytest.MonkeyPatch, many: int
) -> tuple[list[grpc.Future], threading.Event, list[int]]:
    """``many`` MigrateVirtualMachine calls, each that gets a thread held there (as if the
    target agent did not answer) until the event is set; the list counts those that began."""
    assert agent.migrations is not None
    release, began = threading.Event(), [0]
    lock = threading.Lock()

    def unreachable_target(*args: Any, **kwargs: Any) -> Any:
        with lock:
            began[0] += 1
        release.wait(30)
        raise Unavailable("target agent unreachable")  # (injected)

    monkeypatch.setattr(agent.migrations, "migrate", unreachable_target)
    migrations = mgrpc.MigrationServiceStub(agent.channel)
    request = mpb.MigrateVirtualMachineRequest(**WEB, target_agent="127.0.0.1:1")
    calls = [migrations.MigrateVirtualMachine.future(request) for _ in range(many)]
    return calls, release, began


def test_blocking_migration_calls_take_slots_and_leave_threads_for_reads(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply(agent, vm_doc(run_strategy="Halted"))
    many = 60  # more than the whole thread pool
    calls, release, began = _held_migrations(agent, monkeypatch, many)
    try:
        # Each call either runs (held) or was refused at once; none waits for a thread.
        wait_for(
            lambda: began[0] + sum(c.done() for c in calls) == many,
            15,
            message=lambda: f"each call running or refused: {began[0]} running, the rest queued",
        )
        refused = {c.exception().code() for c in calls if c.done()}  # type: ignore[union-attr]
        assert refused == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert began[0] == MIGRATION_CALLS
        _answering(agent)
        migrations = mgrpc.MigrationServiceStub(agent.channel)
        for verb, request in (
            ("CancelMigration", mpb.CancelMigrationRequest(migration_id="m-1")),
            ("UpdateMigration", mpb.UpdateMigrationRequest(migration_id="m-1")),
            ("FinishMigrationTarget", mpb.FinishMigrationTargetRequest(migration_id="m-1")),
            ("PrepareMigrationTarget", mpb.PrepareMigrationTargetRequest(migration_id="m-1")),
        ):
            rpc = getattr(migrations, verb)
            code, details = code_of(lambda: rpc(request, timeout=10))  # noqa: B023 (called at once)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, verb
            assert "migration calls" in details
    finally:
        release.set()
        for call in calls:
            call.exception(timeout=30)
