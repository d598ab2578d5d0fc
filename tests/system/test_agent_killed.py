"""An agent killed with ``kill -9`` while vmctl applies VirtualMachineInstances: the
restarted agent finishes every start, once, and leaves nothing behind."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import yaml

from agent.api._gen.virtagent.v1 import vm_pb2
from tests.system.agentproc import AgentProcess, guest_vm
from tests.system.test_vmctl import vmctl
from tests.testbed.wait import wait_for

READY = "VIRT-AGENT-READY"
NAMES = [f"vmi-{i}" for i in range(4)]


def vmi_file(folder: Path, name: str) -> Path:
    instance = guest_vm(name, memory="192Mi", grace=5)["spec"]["template"]["spec"]
    document = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": instance,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def our_domains(agent: AgentProcess) -> set[str]:
    listed = agent.node.virsh("list", "--all", "--name").split()
    return {d for d in listed if d.startswith("default_vmi-")}


def test_vmis_applied_while_the_agent_is_killed_all_run_once_after_its_restart(
    agent: AgentProcess, tmp_path: Path
) -> None:
    files = [vmi_file(tmp_path, name) for name in NAMES]
    applies = [
        subprocess.Popen(
            [sys.executable, "-m", "agent.cli.main", "--agent", f"unix:{agent.socket}"]
            + ["apply", "-f", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in files
    ]
    try:
        wait_for(lambda: our_domains(agent), 60, interval=0.05, message="a VMI being defined")
        assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        for proc in applies:
            proc.communicate(timeout=60)
    # What the killed agent left: some guests may sit paused between create and resume.
    left_paused = {
        d for d in our_domains(agent) if agent.node.virsh("domstate", d).strip() == "paused"
    }

    agent.start()
    try:
        check_all_run_once(agent, files, left_paused)
    finally:  # the agent's story, kept with the test's files
        (tmp_path / "agent.log").write_text(agent.log_path.read_text())


def check_all_run_once(agent: AgentProcess, files: list[Path], left_paused: set[str]) -> None:
    for path in files:  # the same files again, as a user would
        again = vmctl(agent, "apply", "-f", str(path))
        assert again.returncode == 0, again.stderr

    for name in NAMES:
        vm = agent.wait_phase(name, vm_pb2.PHASE_RUNNING, timeout=120)
        assert vm.spec.run_strategy == "Once"
        agent.wait_console(name, READY, timeout=180)
    for name in NAMES:
        assert agent.console(name).count(READY) == 1, name  # booted exactly once
    assert our_domains(agent) == {f"default_{n}" for n in NAMES}
    running = {agent.get(n).status.qemu_pid for n in NAMES}
    assert running == set(agent.node.qemu_pids())  # one QEMU each, no orphan
    assert {p.name for p in (agent.state_dir / "vms").iterdir()} == our_domains(agent)
    log = agent.log_path.read_text()
    for domain in left_paused:
        name = domain.removeprefix("default_")
        assert f"repaired: vm default/{name}: it was left paused" in log, domain
