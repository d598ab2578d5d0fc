"""The fault tests' node: its own world and node with VM networking, and what they check on
it (leftover taps, nft elements, domains and files; a watch recording what it sees)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from tests.system.agentproc import AgentProcess, guest_vm
from tests.system.netbed import CIDR, DNS, nft_elements, run
from tests.testbed.nodebox import GuestImage, NodeBox, World

__all__ = [
    "NIC",
    "Seen",
    "Watch",
    "delete",
    "domains",
    "fault_bed",
    "health",
    "kubevirt_file",
    "leftovers",
    "net_guest",
    "taps",
]

NIC = [{"name": "default", "masquerade": {}}]
_TAP = re.compile(r"va[0-9a-f]{12}")
_ADDRESS = re.compile(r"10\.250\.\d+\.\d+")


def fault_bed(test_guest: GuestImage) -> Iterator[AgentProcess]:
    """A world with one node and an agent that plumbs VM networks (a fixture's generator)."""
    world = World.start()
    try:
        node = NodeBox.start(world, "node-f", 1)
        agent = AgentProcess(
            node=node,
            guest=test_guest,
            dir=node.dir / "agent",
            extra_args=["--vm-cidr", CIDR, "--dns", DNS],
        )
        agent.start()
        try:
            yield agent
        finally:
            agent.stop()
    finally:
        world.stop()


def net_guest(name: str, *, run_strategy: str = "Always", grace: int = 5) -> dict[str, Any]:
    """The test guest with one masquerade NIC (a tap, a lease, nft elements)."""
    return guest_vm(name, run_strategy=run_strategy, memory="160Mi", grace=grace, interfaces=NIC)


def kubevirt_file(folder: Path, name: str, *, halted: bool = False) -> Path:
    """A KubeVirt VirtualMachineInstance (or a Halted VirtualMachine) file for vmctl apply."""
    vm = net_guest(name)
    instance = vm["spec"]["template"]["spec"]
    if halted:
        document = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {"runStrategy": "Halted", "template": {"spec": instance}},
        }
    else:
        document = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": name},
            "spec": instance,
        }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def domains(node: NodeBox) -> set[str]:
    return set(node.virsh("list", "--all", "--name").split())


def taps(node: NodeBox) -> set[str]:
    listing = json.loads(run(node, "ip", "-j", "link", "show"))
    return {link["ifname"] for link in listing if _TAP.fullmatch(link["ifname"])}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def leftovers(
    agent: AgentProcess, *, running: set[str], stopped: set[str], state: Path | None = None
) -> list[str]:
    """What the node holds that no VM explains: domains, VM folders (under ``state``, the
    agent's state directory as seen from here), QEMUs, taps, nft elements (addresses and
    taps) of VMs that are not running. Empty when all is clean."""
    node = agent.node
    problems = []
    vms = {n: agent.get(n) for n in running | stopped}
    expected = {f"default_{n}" for n in vms}
    if (found := domains(node)) != expected:
        problems.append(f"domains {sorted(found)} != {sorted(expected)}")
    folders = {p.name for p in ((state or agent.state_dir) / "vms").iterdir()}
    if folders != expected:
        problems.append(f"VM folders {sorted(folders)} != {sorted(expected)}")
    pids = {vms[n].status.qemu_pid for n in running}
    if set(node.qemu_pids()) != pids:
        problems.append(f"QEMUs {sorted(node.qemu_pids())} != the running VMs' {sorted(pids)}")
    nics = [vms[n].status.interfaces[0] for n in running]
    own_taps = {nic.tap_name for nic in nics}
    if (found_taps := taps(node)) != own_taps:
        problems.append(f"taps {sorted(found_taps)} != the running VMs' {sorted(own_taps)}")
    own = own_taps | {ip for nic in nics for ip in nic.ip_addresses}
    named = {
        s
        for elements in nft_elements(node).values()
        for s in _strings(elements)
        if _TAP.fullmatch(s) or _ADDRESS.fullmatch(s)
    }
    if named - own:
        problems.append(f"nft elements of no running VM: {sorted(named - own)}")
    if not own <= named | {""}:
        problems.append(f"running VMs without nft elements: {sorted(own - named)}")
    return problems


def delete(agent: AgentProcess, names: set[str]) -> None:
    for name in sorted(names):
        request = pb.DeleteVirtualMachineRequest(
            namespace="default", name=name, grace_period_seconds=0
        )
        try:
            agent.vms.DeleteVirtualMachine(request, timeout=60)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise


def health(agent: AgentProcess) -> int:
    assert agent.channel is not None
    stub = health_pb2_grpc.HealthStub(agent.channel)
    try:
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
    except grpc.RpcError:
        return -1


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic() when the test received it
    type: int
    vm: vm_pb2.VirtualMachine


@dataclass
class Watch:
    """A watch of namespace default, read on a thread. When its stream ends (the agent ended
    it, or ``reopen()``), it resumes from the last version it saw, as clients do; a resume
    the agent refuses (OUT_OF_RANGE) starts again from a snapshot and is counted."""

    agent: AgentProcess
    events: list[Seen] = field(default_factory=list)
    streams: int = 0
    resumes: int = 0  # streams opened from a resource_version, and accepted
    relists: int = 0  # resumes refused with OUT_OF_RANGE
    version: int = 0
    errors: list[str] = field(default_factory=list)  # how streams ended, for failure messages
    _stop: threading.Event = field(default_factory=threading.Event)
    _stream: Any = None
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watch:
        synced = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(synced,), daemon=True)
        self._thread.start()
        assert synced.wait(10), "the watch never synced"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.cancel()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def reopen(self) -> None:
        """End the stream as a lost connection would; the reader resumes it."""
        if self._stream is not None:
            self._stream.cancel()

    def _read(self, synced: threading.Event) -> None:
        while not self._stop.is_set():
            resume_from = self.version
            request = pb.WatchVirtualMachinesRequest(
                namespace="default", resource_version=resume_from
            )
            try:
                stream = self.agent.vms.WatchVirtualMachines(request)
                self._stream = stream
                self.streams += 1
                for event in stream:
                    if event.type == pb.EVENT_TYPE_SYNCED:
                        self.resumes += 1 if resume_from else 0
                        synced.set()
                    self.version = max(self.version, event.resource_version)
                    self.events.append(Seen(time.monotonic(), event.type, event.vm))
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code().name}: {exc.details()}")
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    self.relists += 1
                    self.version = 0
            except Exception as exc:  # noqa: BLE001 - kept for the failure message, then retried
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(0.2)

    def first(self, name: str, phase: int, after: float = 0.0) -> Seen | None:
        for seen in list(self.events):
            if seen.at >= after and seen.vm.metadata.name == name:
                if seen.type != pb.EVENT_TYPE_DELETED and seen.vm.status.phase == phase:
                    return seen
        return None

    def bad_news(self, names: set[str]) -> list[str]:
        """Events that showed one of ``names`` Failed or Deleted."""
        return [
            f"{pb.EventType.Name(s.type)} {s.vm.metadata.name} "
            f"{vm_pb2.Phase.Name(s.vm.status.phase)}"
            for s in list(self.events)
            if s.vm.metadata.name in names
            and (s.type == pb.EVENT_TYPE_DELETED or s.vm.status.phase == vm_pb2.PHASE_FAILED)
        ]
