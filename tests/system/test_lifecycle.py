"""The VM lifecycle through the gRPC API, with the real agent, libvirtd, QEMU and guest."""

from __future__ import annotations

import os
import signal
import threading
import time

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from tests.system.agentproc import AgentProcess, guest_vm
from tests.system.netbed import node_get
from tests.testbed.wait import wait_for

READY = "VIRT-AGENT-READY"


def ref(name: str) -> dict[str, str]:
    return {"namespace": "default", "name": name}


def test_apply_boots_the_guest_to_ready(agent: AgentProcess) -> None:
    vm = agent.apply(guest_vm("boot", token="tok-boot"))
    assert vm.status.phase == vm_pb2.PHASE_RUNNING
    assert vm.status.qemu_pid > 0
    text = agent.wait_console("boot", READY)
    assert "token=tok-boot" in agent.node.virsh("dumpxml", "default_boot")
    assert READY in text
    assert agent.node.virsh("domstate", "default_boot").strip() == "running"


def test_graceful_stop_ends_in_succeeded_without_destroy(agent: AgentProcess) -> None:
    agent.apply(guest_vm("graceful"))
    agent.wait_console("graceful", READY)
    vm = agent.vms.StopVirtualMachine(
        pb.StopVirtualMachineRequest(**ref("graceful")), timeout=60
    ).vm
    assert vm.status.phase == vm_pb2.PHASE_SUCCEEDED
    assert vm.status.reason == "Shutdown"  # libvirt saw the guest power off, not a destroy
    assert "VIRT-AGENT-POWEROFF" in agent.console("graceful")


def test_forced_stop_destroys_at_once(agent: AgentProcess) -> None:
    agent.apply(guest_vm("forced", grace=600))
    agent.wait_console("forced", READY)
    started = time.monotonic()
    vm = agent.vms.StopVirtualMachine(
        pb.StopVirtualMachineRequest(**ref("forced"), force=True), timeout=60
    ).vm
    assert time.monotonic() - started < 30
    assert vm.status.phase == vm_pb2.PHASE_STOPPED and vm.status.reason == "Destroyed"
    assert "VIRT-AGENT-POWEROFF" not in agent.console("forced")


def cpu_time(agent: AgentProcess, domain: str) -> int:
    """CPU time of the guest's vCPU thread (QEMU's own threads keep ticking when paused)."""
    stats = agent.node.virsh("domstats", "--vcpu", domain)
    line = next(x for x in stats.splitlines() if x.strip().startswith("vcpu.0.time="))
    return int(line.split("=", 1)[1])


def guest_uptime(agent: AgentProcess, address: str) -> float:
    """The guest's own uptime from its web page, fetched from inside the node."""
    page = wait_for(lambda: node_get(agent.node, address), 30, message=f"the page of {address}")
    return float(next(x for x in page.splitlines() if x.startswith("uptime=")).split("=", 1)[1])


def test_pause_stops_the_guest_clock_and_resume_continues_it(agent: AgentProcess) -> None:
    nic = [{"name": "default", "masquerade": {}}]
    vm = agent.apply(guest_vm("pausing", interfaces=nic))
    agent.wait_console("pausing", READY)
    address = vm.status.interfaces[0].ip_addresses[0]
    before = guest_uptime(agent, address)
    paused_at = time.monotonic()
    vm = agent.vms.PauseVirtualMachine(
        pb.PauseVirtualMachineRequest(**ref("pausing")), timeout=30
    ).vm
    assert vm.status.phase == vm_pb2.PHASE_PAUSED
    assert node_get(agent.node, address, timeout=1) is None  # a paused guest answers nothing
    samples = [cpu_time(agent, "default_pausing") for _ in range(10)]
    assert len(set(samples)) == 1  # no guest code runs while paused
    wait_for(lambda: time.monotonic() - paused_at > 4, 10, message="4 s of wall time to pass")
    vm = agent.vms.ResumeVirtualMachine(
        pb.ResumeVirtualMachineRequest(**ref("pausing")), timeout=30
    ).vm
    assert vm.status.phase == vm_pb2.PHASE_RUNNING
    after = guest_uptime(agent, address)
    wall = time.monotonic() - paused_at
    # The guest lived through `wall` seconds of which ~4 were paused: its clock skipped them.
    assert after > before
    assert after - before < wall - 3, (before, after, wall)


def test_soft_restart_boots_the_guest_again(agent: AgentProcess) -> None:
    agent.apply(guest_vm("soft"))
    agent.wait_console("soft", READY)
    agent.vms.RestartVirtualMachine(pb.RestartVirtualMachineRequest(**ref("soft")), timeout=30)
    agent.wait_console("soft", READY, count=2)
    assert agent.get("soft").status.phase == vm_pb2.PHASE_RUNNING


def test_delete_leaves_no_domain_and_no_files(agent: AgentProcess) -> None:
    agent.apply(guest_vm("gone"))
    agent.wait_console("gone", READY)
    vm_dir = agent.state_dir / "vms" / "default_gone"
    assert vm_dir.is_dir()
    agent.vms.DeleteVirtualMachine(
        pb.DeleteVirtualMachineRequest(**ref("gone"), grace_period_seconds=0), timeout=60
    )
    assert "default_gone" not in agent.node.virsh("list", "--all", "--name")
    assert not vm_dir.exists()
    assert agent.node.qemu_pids() == []


def watch_events(
    agent: AgentProcess,
) -> tuple[list[tuple[float, vm_pb2.VirtualMachine]], threading.Event, object]:
    events: list[tuple[float, vm_pb2.VirtualMachine]] = []
    synced = threading.Event()
    stream = agent.vms.WatchVirtualMachines(pb.WatchVirtualMachinesRequest(namespace="default"))

    def read() -> None:
        try:
            for event in stream:
                if event.type == pb.EVENT_TYPE_SYNCED:
                    synced.set()
                elif synced.is_set():
                    events.append((time.monotonic(), event.vm))
        except Exception:
            pass  # cancelled at the end of the test

    threading.Thread(target=read, daemon=True).start()
    assert synced.wait(10)
    return events, synced, stream


def test_killed_qemu_shows_failed_crashed_on_the_watch_within_2s(agent: AgentProcess) -> None:
    vm = agent.apply(guest_vm("crashy", run_strategy="Manual"))
    agent.vms.StartVirtualMachine(pb.StartVirtualMachineRequest(**ref("crashy")), timeout=30)
    vm = agent.wait_phase("crashy", vm_pb2.PHASE_RUNNING)
    events, _, stream = watch_events(agent)
    killed_at = time.monotonic()
    os.kill(vm.status.qemu_pid, signal.SIGKILL)

    def failed() -> float:
        for stamp, item in events:
            if item.metadata.name == "crashy" and item.status.phase == vm_pb2.PHASE_FAILED:
                assert item.status.reason == "Crashed"
                return stamp
        return 0.0

    seen = wait_for(failed, 10, message="a Failed event for crashy")
    stream.cancel()  # type: ignore[attr-defined]
    assert seen - killed_at <= 2.0
    assert agent.get("crashy").status.phase == vm_pb2.PHASE_FAILED  # Manual: not restarted


def test_rerun_on_failure_starts_a_crashed_vm_again(agent: AgentProcess) -> None:
    vm = agent.apply(guest_vm("phoenix", run_strategy="RerunOnFailure"))
    agent.wait_console("phoenix", READY)
    os.kill(vm.status.qemu_pid, signal.SIGKILL)
    agent.wait_console("phoenix", READY, count=2)
    again = agent.wait_phase("phoenix", vm_pb2.PHASE_RUNNING)
    assert again.status.qemu_pid != vm.status.qemu_pid


def test_agent_restart_keeps_vms_and_their_status(agent: AgentProcess) -> None:
    running = agent.apply(guest_vm("keeper"))
    agent.apply(guest_vm("sleeper", run_strategy="Halted"))
    agent.wait_console("keeper", READY)
    before = {
        v.metadata.name: v
        for v in agent.vms.ListVirtualMachines(pb.ListVirtualMachinesRequest()).vms
    }
    assert agent.stop(signal.SIGTERM) == 0
    assert agent.node.virsh("domstate", "default_keeper").strip() == "running"  # VMs keep running
    agent.start()
    after = {
        v.metadata.name: v
        for v in agent.vms.ListVirtualMachines(pb.ListVirtualMachinesRequest()).vms
    }
    assert set(after) == set(before)
    for name, vm in before.items():
        assert after[name].status.phase == vm.status.phase
        assert after[name].status.qemu_pid == vm.status.qemu_pid
        assert after[name].metadata.uid == vm.metadata.uid
        assert after[name].metadata.generation == vm.metadata.generation
    assert after["keeper"].status.qemu_pid == running.status.qemu_pid  # not restarted
    assert agent.console("keeper").count(READY) == 1


def health_status(agent: AgentProcess) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    assert agent.channel is not None
    stub = health_pb2_grpc.HealthStub(agent.channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)


def test_health_follows_the_libvirt_connection(agent: AgentProcess) -> None:
    from grpc_health.v1 import health_pb2

    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    agent.apply(guest_vm("steady"))
    agent.wait_console("steady", READY)
    assert health_status(agent) == serving
    agent.node.stop_libvirtd()
    try:
        wait_for(
            lambda: health_status(agent) == not_serving, 10, message="NOT_SERVING without libvirtd"
        )
        # Cached state still answers reads; the VM is not reported gone.
        assert agent.get("steady").status.phase == vm_pb2.PHASE_RUNNING
    finally:
        agent.node.start_daemons()
    wait_for(lambda: health_status(agent) == serving, 30, message="SERVING after libvirtd is back")
    assert agent.get("steady").status.phase == vm_pb2.PHASE_RUNNING
    assert agent.console("steady").count(READY) == 1
