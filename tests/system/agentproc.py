"""The real agent daemon run inside a node in a box, and helpers to talk to it."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.api._gen.virtagent.v1 import node_service_pb2_grpc, vm_pb2, vm_service_pb2_grpc
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from tests.testbed.nodebox import GuestImage, NodeBox
from tests.testbed.wait import read_console, wait_for

_REPO = Path(__file__).resolve().parents[2]


@dataclass
class AgentProcess:
    """One virt-agent process inside ``node``; restartable, stopped by pid."""

    node: NodeBox
    guest: GuestImage
    dir: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[Any] | None = None
    channel: grpc.Channel | None = None

    @property
    def socket(self) -> Path:
        return self.dir / "agent.sock"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def log_path(self) -> Path:
        return self.dir / "agent.log"

    def start(self, timeout: float = 60.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "agent",
            "--unix-socket",
            str(self.socket),
            "--libvirt-uri",
            "qemu:///system",
            "--state-dir",
            str(self.state_dir),
            "--image-root",
            str(self.guest.dir),
            "--virt-type",
            "qemu",
            "--node-name",
            self.node.name,
            "--log-format",
            "text",
            "--log-level",
            "debug",
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child's lifetime
        self.proc = self.node.spawn(argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(_REPO))
        log.close()
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        health = health_pb2_grpc.HealthStub(self.channel)

        def serving() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        wait_for(
            serving, timeout, interval=0.2, message=lambda: f"agent SERVING\n{self.log_tail()}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 45.0) -> int:
        """Signal the agent and wait for it to exit; returns its exit code."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        text = read_console(self.log_path)
        return "\n".join(text.splitlines()[-lines:])

    @property
    def vms(self) -> vm_service_pb2_grpc.VirtualMachineServiceStub:
        assert self.channel is not None, "agent not started"
        return vm_service_pb2_grpc.VirtualMachineServiceStub(self.channel)

    @property
    def nodes(self) -> node_service_pb2_grpc.NodeServiceStub:
        assert self.channel is not None, "agent not started"
        return node_service_pb2_grpc.NodeServiceStub(self.channel)

    # -- helpers for tests ---------------------------------------------------------------

    def apply(self, doc: dict[str, Any], timeout: float = 60) -> vm_pb2.VirtualMachine:
        vm = json_format.ParseDict(doc, vm_pb2.VirtualMachine())
        reply = self.vms.ApplyVirtualMachine(pb.ApplyVirtualMachineRequest(vm=vm), timeout=timeout)
        return reply.vm

    def get(self, name: str, namespace: str = "default") -> vm_pb2.VirtualMachine:
        request = pb.GetVirtualMachineRequest(namespace=namespace, name=name)
        return self.vms.GetVirtualMachine(request, timeout=10).vm

    def console_path(self, name: str, namespace: str = "default") -> Path:
        return self.state_dir / "vms" / f"{namespace}_{name}" / "console.log"

    def console(self, name: str, namespace: str = "default") -> str:
        return read_console(self.console_path(name, namespace))

    def wait_console(self, name: str, marker: str, *, count: int = 1, timeout: float = 90) -> str:
        def seen() -> str:
            text = self.console(name)
            return text if text.count(marker) >= count else ""

        return wait_for(
            seen,
            timeout,
            interval=0.2,
            message=lambda: (
                f"{marker!r} x{count} on the console of {name}:\n"
                + "\n".join(self.console(name).splitlines()[-20:])
            ),
        )

    def wait_phase(self, name: str, phase: int, timeout: float = 60) -> vm_pb2.VirtualMachine:
        return wait_for(
            lambda: vm if (vm := self.get(name)).status.phase == phase else None,
            timeout,
            interval=0.2,
            message=lambda: (
                f"{name} in phase {vm_pb2.Phase.Name(phase)} "
                f"(now {vm_pb2.Phase.Name(self.get(name).status.phase)})"
            ),
        )

    def delete_all(self) -> None:
        for vm in self.vms.ListVirtualMachines(pb.ListVirtualMachinesRequest(), timeout=10).vms:
            self.vms.DeleteVirtualMachine(
                pb.DeleteVirtualMachineRequest(
                    namespace=vm.metadata.namespace, name=vm.metadata.name, grace_period_seconds=0
                ),
                timeout=60,
            )


def guest_vm(
    name: str,
    *,
    namespace: str = "default",
    token: str = "",
    run_strategy: str = "Always",
    memory: str = "256Mi",
    cores: int = 1,
    grace: int = 30,
    interfaces: list[dict[str, Any]] | None = None,
    networks: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A VirtualMachine document booting the test guest by direct kernel boot."""
    # no_timer_check: under TCG on a loaded host the guest kernel's IO-APIC timer check can
    # fail and panic the boot ("IO-APIC + timer doesn't work"), as cloud images also say.
    args = f"console=ttyS0 quiet no_timer_check token={token or name} hostname={name}"
    devices: dict[str, Any] = {}
    instance: dict[str, Any] = {
        "domain": {
            "cpu": {"cores": cores},
            "memory": {"guest": memory},
            "firmware": {
                "kernelBoot": {
                    "kernelArgs": args,
                    "container": {"kernelPath": "vmlinuz", "initrdPath": "initrd.img"},
                }
            },
            "devices": devices,
        },
        "terminationGracePeriodSeconds": grace,
    }
    if interfaces:
        devices["interfaces"] = interfaces
        instance["networks"] = networks or [{"name": i["name"], "pod": {}} for i in interfaces]
    return {
        "metadata": {"namespace": namespace, "name": name, "labels": labels or {}},
        "spec": {"runStrategy": run_strategy, "template": {"spec": instance}},
    }
