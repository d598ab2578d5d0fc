"""vmctl as an operator uses it: KubeVirt YAML in, tables and waits out, against the real agent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.system.agentproc import AgentProcess
from tests.testbed.wait import wait_for

VM_YAML = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: ctl
  labels: {app: ctl}
spec:
  running: true
  template:
    spec:
      terminationGracePeriodSeconds: 30
      domain:
        cpu: {cores: 1}
        resources:
          requests: {memory: 256Mi}
        firmware:
          kernelBoot:
            kernelArgs: "console=ttyS0 quiet token=ctl hostname=ctl"
            container: {kernelPath: vmlinuz, initrdPath: initrd.img}
"""


def vmctl(
    agent: AgentProcess, *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli.main", "--agent", f"unix:{agent.socket}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_vmctl_drives_a_vm_through_its_life(agent: AgentProcess, tmp_path: Path) -> None:
    manifest = tmp_path / "vm.yaml"
    manifest.write_text(VM_YAML)
    applied = vmctl(agent, "apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr
    assert "default/ctl created" in applied.stdout
    again = vmctl(agent, "apply", "-f", "-", stdin=VM_YAML)
    assert again.returncode == 0 and "unchanged" in again.stdout

    agent.wait_console("ctl", "VIRT-AGENT-READY")
    listed = vmctl(agent, "get")
    assert listed.returncode == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "PHASE", "IP", "NODE", "AGE"]
    assert any(r.split()[:3] == ["default", "ctl", "Running"] for r in rows)
    as_json = json.loads(vmctl(agent, "get", "ctl", "-o", "json").stdout)
    assert as_json["status"]["phase"] == "Running"
    assert as_json["metadata"]["labels"] == {"app": "ctl"}

    paused = vmctl(agent, "pause", "ctl", "--wait")
    assert paused.returncode == 0, paused.stderr
    assert (
        json.loads(vmctl(agent, "get", "ctl", "-o", "json").stdout)["status"]["phase"] == "Paused"
    )
    assert vmctl(agent, "unpause", "ctl", "--wait").returncode == 0

    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli.main",
            "--agent",
            f"unix:{agent.socket}",
            "console",
            "ctl",
            "-f",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        seen: list[str] = []

        def follows_to_poweroff() -> bool:
            seen.append(follower.stdout.readline())  # type: ignore[union-attr]
            return "VIRT-AGENT-POWEROFF" in seen[-1]

        stopped = vmctl(agent, "stop", "ctl", "--wait")
        assert stopped.returncode == 0, stopped.stderr
        wait_for(
            follows_to_poweroff,
            30,
            interval=0,
            message="the followed console to show the power-off",
        )
        assert any("VIRT-AGENT-READY" in line for line in seen)
    finally:
        follower.terminate()
        follower.wait(10)
        if follower.stdout is not None:
            follower.stdout.close()
    phase = json.loads(vmctl(agent, "get", "ctl", "-o", "json").stdout)["status"]["phase"]
    assert phase == "Succeeded"

    deleted = vmctl(agent, "delete", "ctl", "--wait")
    assert deleted.returncode == 0, deleted.stderr
    missing = vmctl(agent, "get", "ctl")
    assert missing.returncode == 1
    assert "default/ctl not found" in missing.stderr and "Traceback" not in missing.stderr


def test_vmctl_names_unsupported_yaml_fields(agent: AgentProcess) -> None:
    doc = VM_YAML.replace(
        "cpu: {cores: 1}",
        "cpu: {cores: 1}\n        devices:\n          gpus: [{name: g, deviceName: nvidia}]",
    )
    result = vmctl(agent, "apply", "-f", "-", stdin=doc)
    assert result.returncode == 2
    assert "spec.template.spec.domain.devices.gpus" in result.stderr
