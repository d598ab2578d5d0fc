"""Faults a node meets, with the real agent, libvirtd, QEMU, taps and nftables in a node in a
box: the agent ``kill -9``ed with ten Applies in flight, QEMU killed, a full state directory,
libvirtd killed under a running agent. Each fault case runs three rounds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from tests.system.agentproc import AgentProcess
from tests.system.faultbed import (
    Watch,
    delete,
    domains,
    fault_bed,
    health,
    kubevirt_file,
    leftovers,
    net_guest,
)
from tests.system.test_vmctl import vmctl
from tests.testbed.nodebox import GuestImage
from tests.testbed.wait import wait_for

READY = "VIRT-AGENT-READY"
ROUNDS = [1, 2, 3]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def bed(test_guest: GuestImage) -> Iterator[AgentProcess]:
    yield from fault_bed(test_guest)


@pytest.fixture
def agent(bed: AgentProcess) -> AgentProcess:
    """The module's agent, started again if a test left it stopped."""
    if bed.proc is None or bed.proc.poll() is not None:
        bed.stop()
        bed.start()
    return bed


def qemu_pid(agent: AgentProcess, domain: str) -> int:
    pidfile = agent.node.dir / "run" / "libvirt" / "qemu" / f"{domain}.pid"
    try:
        return int(pidfile.read_text().strip() or 0)
    except FileNotFoundError:
        return 0


def measured(what: str, seconds: float) -> None:
    """The figures the report quotes (seen with ``pytest -s``)."""
    print(f"\nMEASURED {what}: {seconds:.2f} s")


# -- the agent kill -9ed with ten Applies in flight -----------------------------------------

VMIS = {f"vmi-{i}" for i in range(8)}  # Once: run as soon as applied
HELD = {"held-0", "held-1"}  # Halted VirtualMachines: defined, never run
KILL_AT = {1: 1, 2: 5, 3: 9}  # domains defined when the agent is killed, per round


@pytest.mark.parametrize("round_", ROUNDS)
def test_ten_applies_in_flight_and_kill_9_every_vm_ends_as_desired_once(
    agent: AgentProcess, tmp_path: Path, round_: int
) -> None:
    files = [kubevirt_file(tmp_path, n) for n in sorted(VMIS)]
    files += [kubevirt_file(tmp_path, n, halted=True) for n in sorted(HELD)]
    try:
        before = kill_during_applies(agent, files, KILL_AT[round_])
        agent.start()
        for path in files:  # the same files again, as a user would
            again = vmctl(agent, "apply", "-f", str(path))
            assert again.returncode == 0, again.stderr
        for name in sorted(VMIS):
            agent.wait_phase(name, vm_pb2.PHASE_RUNNING, timeout=120)
            agent.wait_console(name, READY, timeout=180)
        for name in sorted(HELD):
            assert agent.get(name).status.phase == vm_pb2.PHASE_STOPPED, name
        for name in sorted(VMIS):
            assert agent.console(name).count(READY) == 1, name  # booted exactly once
            assert agent.get(name).spec.run_strategy == "Once"
        for domain, pid in before.running.items():  # running at the kill: never restarted
            assert qemu_pid(agent, domain) == pid, domain
        assert leftovers(agent, running=VMIS, stopped=HELD) == []
        log = agent.log_path.read_text()
        for domain in before.paused:
            name = domain.removeprefix("default_")
            assert f"repaired: vm default/{name}: it was left paused" in log, domain
    finally:
        (tmp_path / "agent.log").write_text(agent.log_path.read_text())
        if agent.proc is not None:
            delete(agent, VMIS | HELD)


class Before:
    """What the killed agent left: guests running (with their QEMU) and guests paused."""

    def __init__(self, agent: AgentProcess) -> None:
        self.running: dict[str, int] = {}
        self.paused: set[str] = set()
        for domain in domains(agent.node):
            state = agent.node.virsh("domstate", domain).strip()
            if state == "running":
                self.running[domain] = qemu_pid(agent, domain)
            elif state == "paused":
                self.paused.add(domain)


def kill_during_applies(agent: AgentProcess, files: list[Path], kill_at: int) -> Before:
    argv = [sys.executable, "-m", "agent.cli.main", "--agent", f"unix:{agent.socket}", "apply"]
    applies = [
        subprocess.Popen(
            [*argv, "-f", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for path in files
    ]
    try:
        wait_for(
            lambda: len(domains(agent.node)) >= kill_at,
            90,
            interval=0.02,
            message=f"{kill_at} VMs being defined",
        )
        assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        for proc in applies:
            proc.communicate(timeout=60)
    return Before(agent)


# -- QEMU killed -------------------------------------------------------------------------


@pytest.mark.parametrize("round_", ROUNDS)
def test_killed_qemu_is_failed_crashed_within_2s_and_rerun_on_failure_runs_it_again(
    agent: AgentProcess, tmp_path: Path, round_: int
) -> None:
    vm = agent.apply(net_guest("phoenix", run_strategy="RerunOnFailure"))
    try:
        agent.wait_console("phoenix", READY, timeout=120)
        with Watch(agent) as watch:
            killed = time.monotonic()
            os.kill(vm.status.qemu_pid, signal.SIGKILL)
            failed = wait_for(
                lambda: watch.first("phoenix", vm_pb2.PHASE_FAILED, after=killed),
                20,
                message="phoenix Failed on the watch",
            )
        assert failed.vm.status.reason == "Crashed"
        measured(f"round {round_}: QEMU kill -> Failed/Crashed on the watch", failed.at - killed)
        assert failed.at - killed <= 2.0
        agent.wait_console("phoenix", READY, count=2, timeout=120)
        again = agent.wait_phase("phoenix", vm_pb2.PHASE_RUNNING)
        assert again.status.qemu_pid not in (0, vm.status.qemu_pid)
        assert leftovers(agent, running={"phoenix"}, stopped=set()) == []
    finally:
        (tmp_path / "agent.log").write_text(agent.log_path.read_text())
        delete(agent, {"phoenix"})


# -- a full state directory ------------------------------------------------------------------


def seeded_guest(name: str) -> vm_pb2.VirtualMachine:
    """A guest whose Apply writes into the state directory (its cloud-init seed)."""
    doc = net_guest(name)
    instance = doc["spec"]["template"]["spec"]
    instance["domain"]["devices"]["disks"] = [{"name": "seed", "disk": {"bus": "virtio"}}]
    instance["volumes"] = [
        {"name": "seed", "cloudInitNoCloud": {"userData": "#cloud-config\n" + "#" * 32768}}
    ]
    return json_format.ParseDict(doc, vm_pb2.VirtualMachine())


def test_a_full_state_directory_fails_the_apply_clearly_and_leaves_nothing(
    agent: AgentProcess, tmp_path: Path
) -> None:
    node = agent.node
    full = AgentProcess(node=node, guest=agent.guest, dir=node.dir / "full")
    full.extra_args = agent.extra_args
    full.state_dir.mkdir(parents=True)
    agent.stop()
    # A small tmpfs, mounted inside the node (whose mount namespace is private), seen from
    # here through the node's root.
    node.exec(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(full.state_dir)])
    inside = Path(f"/proc/{node.keeper_pid}/root") / str(full.state_dir).lstrip("/")
    try:
        full.start()
        for round_ in ROUNDS:
            fill_and_apply(full, inside, round_)
    finally:
        full.stop()
        (tmp_path / "agent.log").write_text(full.log_path.read_text())
        node.exec(["umount", str(full.state_dir)])


def fill_and_apply(agent: AgentProcess, inside: Path, round_: int) -> None:
    name = f"seeded-{round_}"
    filler = inside / "filler"
    # Unbuffered: a buffered writer would raise ENOSPC again when it flushes at close.
    with open(filler, "wb", buffering=0) as handle:  # until the tmpfs is full
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    with pytest.raises(grpc.RpcError) as failed:
        agent.vms.ApplyVirtualMachine(
            pb.ApplyVirtualMachineRequest(vm=seeded_guest(name)), timeout=60
        )
    error = failed.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "no space left" in error.details().lower(), error.details()
    assert str(agent.state_dir) in error.details(), error.details()
    assert domains(agent.node) == set()
    assert list((inside / "vms").iterdir()) == []
    assert leftovers(agent, running=set(), stopped=set(), state=inside) == []
    # Room again: the same Apply succeeds (what the failed one took was given back).
    filler.unlink()
    vm = agent.vms.ApplyVirtualMachine(
        pb.ApplyVirtualMachineRequest(vm=seeded_guest(name)), timeout=60
    ).vm
    assert vm.status.phase == vm_pb2.PHASE_RUNNING
    delete(agent, {name})
    assert domains(agent.node) == set()


# -- libvirtd killed under a running agent (last: its VMs stay up across the rounds) ---------

STEADY = {"steady-0", "steady-1"}


@pytest.fixture(scope="module")
def steady(bed: AgentProcess) -> Iterator[dict[str, int]]:
    """Two running guests with NICs; their QEMU pids."""
    if bed.proc is None or bed.proc.poll() is not None:
        bed.stop()
        bed.start()
    for name in sorted(STEADY):
        bed.apply(net_guest(name))
    for name in sorted(STEADY):
        bed.wait_console(name, READY, timeout=120)
    yield {name: bed.get(name).status.qemu_pid for name in STEADY}
    if bed.proc is not None:
        delete(bed, STEADY)


@pytest.mark.parametrize("round_", ROUNDS)
def test_libvirtd_killed_and_back_health_follows_and_the_watch_never_loses_a_vm(
    agent: AgentProcess, steady: dict[str, int], round_: int
) -> None:
    node = agent.node
    with Watch(agent) as watch:
        libvirtd = node.libvirtd_pid
        assert libvirtd is not None
        os.kill(libvirtd, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: health(agent) == NOT_SERVING, 30, interval=0.05, message="NOT_SERVING")
        measured(f"round {round_}: libvirtd killed -> agent NOT_SERVING", time.monotonic() - killed)
        for name in STEADY:  # reads answer from the cache meanwhile
            assert agent.get(name).status.phase == vm_pb2.PHASE_RUNNING
        watch.reopen()  # the client loses its stream while libvirtd is away, and resumes
        node.start_daemons()  # returns once the new libvirtd answers
        back = time.monotonic()
        wait_for(lambda: health(agent) == SERVING, 60, interval=0.05, message="SERVING")
        serving = time.monotonic() - back
        measured(f"round {round_}: libvirtd back -> agent SERVING", serving)
        assert serving <= 10.0
        for name in STEADY:
            assert agent.wait_phase(name, vm_pb2.PHASE_RUNNING).status.qemu_pid == steady[name]
        # The reader resumes on its own thread: wait (bounded) for it, before the watch ends.
        wait_for(
            lambda: watch.resumes + watch.relists >= 1,
            30,
            message=lambda: (
                f"the watch resumed ({watch.streams} streams, reader alive {watch.alive}, "
                f"ended: {watch.errors[-3:]})"
            ),
        )
    print(f"watch: {watch.streams} streams, {watch.resumes} resumed, {len(watch.events)} events")
    assert watch.bad_news(STEADY) == []
    assert watch.resumes >= 1 and watch.relists == 0  # resumed where it was: no gap
    for name in STEADY:
        assert agent.console(name).count(READY) == 1, name  # never restarted
    assert leftovers(agent, running=STEADY, stopped=set()) == []
