"""Every VM verb through a real gRPC channel, on libvirt's test driver."""

from __future__ import annotations

import os
import threading
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from agent.api._gen.virtagent.v1 import node_service_pb2, vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from tests.api.conftest import Agent
from tests.testbed.wait import wait_for


def vm_doc(name: str = "web", namespace: str = "default", **overrides: Any) -> dict[str, Any]:
    instance: dict[str, Any] = {
        "domain": {
            "cpu": {"cores": 1},
            "memory": {"guest": "128Mi"},
            "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
        },
        "volumes": [{"name": "root", "imageFile": {"path": "base.qcow2"}}],
        "terminationGracePeriodSeconds": 5,
    }
    instance.update(overrides.pop("instance", {}))
    doc = {
        "metadata": {"namespace": namespace, "name": name, "labels": overrides.pop("labels", {})},
        "spec": {
            "runStrategy": overrides.pop("run_strategy", "Always"),
            "template": {"spec": instance},
        },
    }
    return doc


def apply(
    agent: Agent, doc: dict[str, Any], request_id: str = ""
) -> pb.ApplyVirtualMachineResponse:
    vm = json_format.ParseDict(doc, vm_pb2.VirtualMachine())
    return agent.vms.ApplyVirtualMachine(
        pb.ApplyVirtualMachineRequest(vm=vm, request_id=request_id)
    )


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def condition(vm: vm_pb2.VirtualMachine, kind: str) -> str:
    return next((c.status for c in vm.status.conditions if c.type == kind), "")


def test_apply_creates_a_running_vm_stored_in_libvirt(agent: Agent) -> None:
    reply = apply(agent, vm_doc())
    assert reply.changed
    assert reply.vm.status.phase == vm_pb2.PHASE_RUNNING
    assert reply.vm.metadata.generation == 1
    assert reply.vm.metadata.uid  # assigned by the agent
    info = agent.hv.lookup("default_web")
    assert info is not None and "virt-agent.io/xmlns/vm/v1" in info.config_xml
    overlays = os.listdir(agent.state_dir / "vms" / "default_web")
    assert any(name.startswith("root-") and name.endswith(".qcow2") for name in overlays)


def test_apply_of_an_identical_spec_changes_nothing(agent: Agent) -> None:
    first = apply(agent, vm_doc())
    again = apply(agent, vm_doc())
    assert not again.changed
    assert again.vm.metadata.generation == first.vm.metadata.generation
    assert again.vm.metadata.uid == first.vm.metadata.uid


def test_changed_spec_of_a_running_vm_waits_for_a_hard_restart(agent: Agent) -> None:
    apply(agent, vm_doc())
    changed = apply(
        agent,
        vm_doc(
            instance={
                "domain": {
                    "cpu": {"cores": 2},
                    "memory": {"guest": "128Mi"},
                    "devices": {"disks": [{"name": "root", "disk": {}}]},
                }
            }
        ),
    )
    assert changed.changed and changed.vm.metadata.generation == 2
    assert changed.vm.spec.template.spec.domain.cpu.cores == 2
    assert condition(changed.vm, "RestartRequired") == "True"
    restarted = agent.vms.RestartVirtualMachine(
        pb.RestartVirtualMachineRequest(namespace="default", name="web", hard=True)
    ).vm
    assert restarted.status.phase == vm_pb2.PHASE_RUNNING
    assert condition(restarted, "RestartRequired") == ""
    assert restarted.status.running_generation == 2


def test_halted_vm_is_defined_but_not_started(agent: Agent) -> None:
    vm = apply(agent, vm_doc(run_strategy="Halted")).vm
    assert vm.status.phase == vm_pb2.PHASE_STOPPED
    started = agent.vms.StartVirtualMachine(
        pb.StartVirtualMachineRequest(namespace="default", name="web")
    ).vm
    assert started.status.phase == vm_pb2.PHASE_RUNNING


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (vm_doc(name="Bad_Name"), "metadata.name"),
        (vm_doc(run_strategy="Sometimes"), "spec.runStrategy"),
        (
            vm_doc(
                instance={"volumes": [{"name": "root", "imageFile": {"path": "../etc/passwd"}}]}
            ),
            "spec.template.spec.volumes[0].imageFile.path",
        ),
        (
            vm_doc(
                instance={"volumes": [{"name": "root", "imageFile": {"path": "missing.qcow2"}}]}
            ),
            "spec.template.spec.volumes[0].imageFile.path",
        ),
        (
            vm_doc(instance={"domain": {"memory": {"guest": "lots"}}}),
            "spec.template.spec.domain.memory.guest",
        ),
    ],
    ids=["name", "run-strategy", "dotdot", "missing-image", "memory"],
)
def test_a_bad_spec_is_rejected_naming_the_field_and_leaves_nothing(
    agent: Agent, doc: dict[str, Any], field: str
) -> None:
    code, details = code_of(lambda: apply(agent, doc))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field), details
    assert agent.hv.list_domains() == []
    assert not (agent.state_dir / "vms" / "default_web").exists()


def test_a_symlinked_image_is_refused(agent: Agent) -> None:
    os.symlink("/etc/passwd", agent.image_root / "evil.qcow2")
    doc = vm_doc(instance={"volumes": [{"name": "root", "imageFile": {"path": "evil.qcow2"}}]})
    code, details = code_of(lambda: apply(agent, doc))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "symlink" in details


def test_unknown_vm_is_not_found_and_bad_names_are_invalid(agent: Agent) -> None:
    code, details = code_of(
        lambda: agent.vms.GetVirtualMachine(
            pb.GetVirtualMachineRequest(namespace="default", name="nope")
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND and "default/nope" in details
    code, details = code_of(
        lambda: agent.vms.StopVirtualMachine(
            pb.StopVirtualMachineRequest(namespace="default", name="NO")
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("name")


def test_list_filters_by_namespace_and_labels(agent: Agent) -> None:
    apply(agent, vm_doc("a", "team-1", labels={"app": "web"}, run_strategy="Halted"))
    apply(agent, vm_doc("b", "team-1", labels={"app": "db"}, run_strategy="Halted"))
    apply(agent, vm_doc("c", "team-2", labels={"app": "web"}, run_strategy="Halted"))

    def names(**kw: str) -> list[str]:
        reply = agent.vms.ListVirtualMachines(pb.ListVirtualMachinesRequest(**kw))
        return [f"{v.metadata.namespace}/{v.metadata.name}" for v in reply.vms]

    assert names() == ["team-1/a", "team-1/b", "team-2/c"]
    assert names(namespace="team-1") == ["team-1/a", "team-1/b"]
    assert names(label_selector="app=web") == ["team-1/a", "team-2/c"]
    assert names(label_selector="app!=web") == ["team-1/b"]
    code, _ = code_of(lambda: names(label_selector="bad key!"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_verbs_and_their_preconditions(agent: Agent) -> None:
    apply(agent, vm_doc())
    ref = {"namespace": "default", "name": "web"}
    paused = agent.vms.PauseVirtualMachine(pb.PauseVirtualMachineRequest(**ref)).vm
    assert paused.status.phase == vm_pb2.PHASE_PAUSED and condition(paused, "Paused") == "True"
    again = agent.vms.PauseVirtualMachine(pb.PauseVirtualMachineRequest(**ref)).vm
    assert again.status.phase == vm_pb2.PHASE_PAUSED
    resumed = agent.vms.ResumeVirtualMachine(pb.ResumeVirtualMachineRequest(**ref)).vm
    assert resumed.status.phase == vm_pb2.PHASE_RUNNING
    soft = agent.vms.RestartVirtualMachine(pb.RestartVirtualMachineRequest(**ref)).vm
    assert soft.status.phase == vm_pb2.PHASE_RUNNING
    stopped = agent.vms.StopVirtualMachine(pb.StopVirtualMachineRequest(**ref, force=True)).vm
    assert stopped.status.phase == vm_pb2.PHASE_STOPPED and stopped.status.reason == "Destroyed"
    # Stopping a stopped VM succeeds; pausing or soft-restarting it is a wrong state.
    agent.vms.StopVirtualMachine(pb.StopVirtualMachineRequest(**ref))
    code, _ = code_of(lambda: agent.vms.PauseVirtualMachine(pb.PauseVirtualMachineRequest(**ref)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, _ = code_of(
        lambda: agent.vms.RestartVirtualMachine(pb.RestartVirtualMachineRequest(**ref))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, _ = code_of(
        lambda: agent.vms.StopVirtualMachine(
            pb.StopVirtualMachineRequest(**ref, grace_period_seconds=-1)
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_graceful_stop_of_a_vm_ends_in_succeeded(agent: Agent) -> None:
    apply(agent, vm_doc())
    vm = agent.vms.StopVirtualMachine(
        pb.StopVirtualMachineRequest(namespace="default", name="web")
    ).vm
    assert vm.status.phase == vm_pb2.PHASE_SUCCEEDED and vm.status.reason == "Shutdown"
    get = pb.GetVirtualMachineRequest(namespace="default", name="web")

    def stopped_at() -> float:
        status = agent.vms.GetVirtualMachine(get).vm.status
        return status.stopped_at.ToNanoseconds() / 1e9

    recorded = wait_for(stopped_at, 10, message="status.stoppedAt to be recorded")
    assert recorded >= vm.metadata.creation_timestamp.ToNanoseconds() / 1e9 > 0


def test_delete_removes_domain_and_files(agent: Agent) -> None:
    apply(agent, vm_doc())
    agent.vms.DeleteVirtualMachine(
        pb.DeleteVirtualMachineRequest(namespace="default", name="web", request_id="r-1")
    )
    assert agent.hv.lookup("default_web") is None
    assert not (agent.state_dir / "vms" / "default_web").exists()
    # The same request again is answered as before; a new one finds nothing.
    agent.vms.DeleteVirtualMachine(
        pb.DeleteVirtualMachineRequest(namespace="default", name="web", request_id="r-1")
    )
    code, _ = code_of(
        lambda: agent.vms.DeleteVirtualMachine(
            pb.DeleteVirtualMachineRequest(namespace="default", name="web")
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_a_repeated_request_id_has_no_second_effect(agent: Agent) -> None:
    apply(agent, vm_doc())
    request = pb.RestartVirtualMachineRequest(
        namespace="default", name="web", hard=True, request_id="same"
    )
    first = agent.vms.RestartVirtualMachine(request).vm
    second = agent.vms.RestartVirtualMachine(request).vm
    assert second.status.started_at == first.status.started_at
    other = pb.StopVirtualMachineRequest(namespace="default", name="web", request_id="same")
    code, _ = code_of(lambda: agent.vms.StopVirtualMachine(other))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_concurrent_operation_on_the_same_vm_is_aborted(agent: Agent) -> None:
    apply(agent, vm_doc())
    with agent.service._operation("default_web", "test"):
        code, details = code_of(
            lambda: agent.vms.PauseVirtualMachine(
                pb.PauseVirtualMachineRequest(namespace="default", name="web")
            )
        )
    assert code == grpc.StatusCode.ABORTED and "default/web" in details


def test_foreign_domain_and_other_uid_are_already_exists(agent: Agent) -> None:
    agent.hv.define(
        "<domain type='qemu'><name>default_other</name><memory>131072</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    code, details = code_of(lambda: apply(agent, vm_doc("other")))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "not managed" in details
    apply(agent, vm_doc())
    doc = vm_doc()
    doc["metadata"]["uid"] = "9b3c0c1e-58f3-4c4e-9d4c-5f8c1a1e2b3d"
    code, _ = code_of(lambda: apply(agent, doc))
    assert code == grpc.StatusCode.ALREADY_EXISTS


def test_libvirt_down_is_unavailable(agent: Agent) -> None:
    agent.hv.close()
    code, _ = code_of(lambda: apply(agent, vm_doc()))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_watch_sends_a_snapshot_then_changes_in_order(agent: Agent) -> None:
    apply(agent, vm_doc("a"))
    stream = agent.vms.WatchVirtualMachines(pb.WatchVirtualMachinesRequest(namespace="default"))
    events: list[pb.WatchVirtualMachinesResponse] = []
    done = threading.Event()

    def read() -> None:
        for event in stream:
            events.append(event)
            if event.type == pb.EVENT_TYPE_DELETED:
                done.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    apply(agent, vm_doc("b", run_strategy="Halted"))
    agent.vms.DeleteVirtualMachine(pb.DeleteVirtualMachineRequest(namespace="default", name="a"))
    assert done.wait(10), f"no DELETED event; got {[e.type for e in events]}"
    stream.cancel()
    kinds = [(e.type, e.vm.metadata.name) for e in events]
    assert kinds[0] == (pb.EVENT_TYPE_ADDED, "a")
    assert kinds[1] == (pb.EVENT_TYPE_SYNCED, "")
    assert (pb.EVENT_TYPE_ADDED, "b") in kinds
    assert kinds[-1] == (pb.EVENT_TYPE_DELETED, "a")
    versions = [e.resource_version for e in events[1:]]
    assert versions == sorted(versions) and len(set(versions[1:])) == len(versions[1:])


def test_console_log_tail(agent: Agent) -> None:
    apply(agent, vm_doc())
    log = agent.state_dir / "vms" / "default_web" / "console.log"
    log.write_bytes(b"one\ntwo\nthree\n")
    chunks = agent.vms.GetConsoleLog(
        pb.GetConsoleLogRequest(namespace="default", name="web", tail_lines=2)
    )
    assert b"".join(c.data for c in chunks) == b"two\nthree\n"
    whole = agent.vms.GetConsoleLog(pb.GetConsoleLogRequest(namespace="default", name="web"))
    assert b"".join(c.data for c in whole) == b"one\ntwo\nthree\n"


def test_get_node_reports_capacity_versions_and_counts(agent: Agent) -> None:
    apply(agent, vm_doc("a"))
    apply(agent, vm_doc("b", run_strategy="Halted"))
    node = agent.nodes.GetNode(node_service_pb2.GetNodeRequest()).node
    assert node.name == "node-test" and node.cpu_capacity >= 1 and node.memory_capacity_bytes > 0
    assert node.libvirt_version and node.virt_type == "qemu"
    assert dict(node.vm_counts) == {"Running": 1, "Stopped": 1}


def test_migration_refusals_name_the_problem(agent: Agent) -> None:
    from agent.api._gen.virtagent.v1 import migration_service_pb2 as mpb
    from agent.api._gen.virtagent.v1 import migration_service_pb2_grpc

    stub = migration_service_pb2_grpc.MigrationServiceStub(agent.channel)

    def migrate(name: str, target: str = "192.0.2.99:7443", **options: object) -> tuple[Any, str]:
        request = mpb.MigrateVirtualMachineRequest(
            namespace="default", name=name, target_agent=target,
            options=mpb.MigrationOptions(**options),  # type: ignore[arg-type]
        )  # fmt: skip
        return code_of(lambda: stub.MigrateVirtualMachine(request))

    apply(agent, vm_doc("halted", run_strategy="Halted"))
    assert migrate("missing")[0] == grpc.StatusCode.NOT_FOUND
    code, details = migrate("halted")
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "only a running VM" in details
    code, details = migrate("halted", target="")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "target_agent" in details
    code, details = migrate("halted", allow_post_copy=True, allow_auto_converge=True)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "options.post_copy" in details
    code, details = code_of(lambda: stub.GetMigration(mpb.GetMigrationRequest(migration_id="x")))
    assert code == grpc.StatusCode.NOT_FOUND and "migration 'x'" in details
    assert not stub.ListMigrations(mpb.ListMigrationsRequest()).migrations


def test_server_reflection_lists_the_services(agent: Agent) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    services = ProtoReflectionDescriptorDatabase(agent.channel).get_services()
    assert "virtagent.v1.VirtualMachineService" in services
    assert "virtagent.v1.NodeService" in services
    assert "grpc.health.v1.Health" in services


def test_a_vm_that_cannot_start_is_not_left_behind(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.errors import FailedPrecondition

    def refuse(name: str, *, paused: bool = False) -> None:
        raise FailedPrecondition(f"starting domain {name}: QEMU refused")  # injected fault

    monkeypatch.setattr(agent.hv, "start", refuse)
    code, details = code_of(lambda: apply(agent, vm_doc()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "QEMU refused" in details
    assert agent.hv.lookup("default_web") is None
    assert not (agent.state_dir / "vms" / "default_web").exists()
    code, _ = code_of(
        lambda: agent.vms.GetVirtualMachine(
            pb.GetVirtualMachineRequest(namespace="default", name="web")
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_a_guest_ignoring_acpi_is_destroyed_when_the_grace_period_ends(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply(agent, vm_doc())
    presses: list[str] = []
    monkeypatch.setattr(agent.hv, "shutdown", presses.append)  # the guest ignores the button
    request = pb.StopVirtualMachineRequest(namespace="default", name="web", grace_period_seconds=1)
    vm = agent.vms.StopVirtualMachine(request).vm
    assert presses == ["default_web"]
    assert vm.status.phase == vm_pb2.PHASE_STOPPED and vm.status.reason == "Destroyed"


def test_open_streams_are_capped_so_unary_calls_keep_working(agent: Agent) -> None:
    servicer = agent.service_servicer
    limit = servicer.streams.limit
    streams = [
        agent.vms.WatchVirtualMachines(pb.WatchVirtualMachinesRequest()) for _ in range(limit)
    ]
    try:
        for stream in streams:
            assert next(stream).type == pb.EVENT_TYPE_SYNCED  # each is open and holding a slot
        extra = agent.vms.WatchVirtualMachines(pb.WatchVirtualMachinesRequest())
        code, details = code_of(lambda: next(extra))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "streams" in details
        apply(agent, vm_doc(run_strategy="Halted"))  # unary calls still get a thread
    finally:
        for stream in streams:
            stream.cancel()


def test_a_label_change_applies_at_once_without_a_restart(agent: Agent) -> None:
    apply(agent, vm_doc())
    relabelled = apply(
        agent, vm_doc(labels={"tier": "web"}, instance={"terminationGracePeriodSeconds": 9})
    )
    assert relabelled.changed and relabelled.vm.metadata.generation == 2
    assert dict(relabelled.vm.metadata.labels) == {"tier": "web"}
    assert condition(relabelled.vm, "RestartRequired") == ""


def test_an_always_vm_left_unstarted_is_started_by_the_next_apply(agent: Agent) -> None:
    import dataclasses

    from agent.models import RunStrategy

    apply(agent, vm_doc(run_strategy="Manual"))
    _, spec, books = agent.service.steps.require("default_web")
    # Stored as Always but never started: as if the agent died between define and start.
    always = dataclasses.replace(spec, run_strategy=RunStrategy.ALWAYS)
    agent.service.steps.define("default_web", always, books, new=False)
    again = apply(agent, vm_doc(run_strategy="Always"))
    assert not again.changed
    assert again.vm.status.phase == vm_pb2.PHASE_RUNNING
    agent.vms.StopVirtualMachine(pb.StopVirtualMachineRequest(namespace="default", name="web"))
    stopped = apply(agent, vm_doc(run_strategy="Always"))  # stopped on purpose: stays stopped
    assert stopped.vm.status.phase != vm_pb2.PHASE_RUNNING


def test_a_resource_cpu_count_over_the_limit_is_refused_by_name(agent: Agent) -> None:
    doc = vm_doc(instance={"domain": {"resources": {"requests": {"memory": "64Mi", "cpu": "300"}}}})
    code, details = code_of(lambda: apply(agent, doc))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("spec.template.spec.domain.resources.requests.cpu")
    assert agent.hv.list_domains() == []


def test_a_watcher_that_falls_behind_is_told_to_list_again(agent: Agent) -> None:
    from agent.domain.vmcache import WatchEvent

    stream = agent.vms.WatchVirtualMachines(pb.WatchVirtualMachinesRequest())
    assert next(stream).type == pb.EVENT_TYPE_SYNCED
    # What the registry hands a watcher whose buffer overflowed (injected: filling 10,000
    # events through gRPC's own buffers takes long and depends on flow control).
    (watch,) = agent.service.cache._watches
    watch.queue.put(WatchEvent("OVERFLOW", None, 0))
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "watch again" in info.value.details()


def test_slow_calls_are_capped_and_quick_ones_still_answer(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply(agent, vm_doc(run_strategy="Halted"))
    release = threading.Event()
    started = threading.Semaphore(0)
    real_start = agent.service.start

    def slow_start(namespace: str, name: str, request_id: str = "") -> Any:
        started.release()
        release.wait(10)  # a start that takes long (injected)
        return real_start(namespace, name, request_id)

    monkeypatch.setattr(agent.service, "start", slow_start)
    limit = agent.service_servicer.slow_calls.limit
    request = pb.StartVirtualMachineRequest(namespace="default", name="web")
    futures = [agent.vms.StartVirtualMachine.future(request) for _ in range(limit)]
    try:
        for _ in range(limit):
            assert started.acquire(timeout=10)  # every slot is taken
        code, details = code_of(lambda: agent.vms.StartVirtualMachine(request))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry" in details
        get = pb.GetVirtualMachineRequest(namespace="default", name="web")
        assert agent.vms.GetVirtualMachine(get, timeout=5).vm.metadata.name == "web"
    finally:
        release.set()
        for future in futures:
            future.exception(timeout=30)


@pytest.mark.parametrize(
    ("features", "field"),
    [
        ({"hyperv": {"relaxed": {}, "vpindex": {}}}, "features.hyperv.vpindex"),
        ({"pvspinlock": {}}, "features.pvspinlock"),
    ],
    ids=["hyperv-vpindex", "pvspinlock"],
)
def test_settings_tcg_cannot_run_are_failed_precondition_naming_the_field(
    agent: Agent, features: dict[str, Any], field: str
) -> None:
    doc = vm_doc()
    doc["spec"]["template"]["spec"]["domain"]["features"] = features
    code, details = code_of(lambda: apply(agent, doc))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith(f"spec.template.spec.domain.{field}: needs KVM"), details
    assert agent.hv.list_domains() == []
    assert not (agent.state_dir / "vms" / "default_web").exists()
