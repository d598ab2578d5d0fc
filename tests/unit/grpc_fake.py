"""A stateful fake of the agent's gRPC API (VMs and node) for the client and vmctl tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc

from agent.api._gen.virtagent.v1 import (
    node_service_pb2,
    node_service_pb2_grpc,
    vm_pb2,
    vm_service_pb2,
    vm_service_pb2_grpc,
)

# How vmctl's tests name a recorded call: short strings such as "stop force=True grace=0".
_SAID: dict[str, Callable[[Any], str]] = {
    "Apply": lambda r: "apply",
    "Get": lambda r: "get",
    "List": lambda r: f"list {r.namespace!r}",
    "Watch": lambda r: "watch",
    "Start": lambda r: "start",
    "Stop": lambda r: f"stop force={r.force} grace={r.grace_period_seconds}",
    "Restart": lambda r: f"restart hard={r.hard}",
    "Pause": lambda r: "pause",
    "Resume": lambda r: "resume",
    "Delete": lambda r: "delete",
    "Console": lambda r: f"console tail={r.tail_lines} follow={r.follow}",
    "GetNode": lambda r: "node",
}


class FakeAgent(
    vm_service_pb2_grpc.VirtualMachineServiceServicer, node_service_pb2_grpc.NodeServiceServicer
):
    """VMs in a dict, every call recorded as (method, request) with the deadline it carried.

    Knobs: ``failures`` are status codes the next calls fail with; ``hang`` holds every call
    until ``release`` is set; ``later`` are watch events sent after the snapshot;
    ``after_start`` is the phase Start leaves a VM in; ``console`` the chunks of the console
    log. A followed console log never ends: ``cancelled`` is set when the client cancels it.
    """

    def __init__(self) -> None:
        self.vms: dict[tuple[str, str], vm_pb2.VirtualMachine] = {}
        self.calls: list[tuple[str, Any]] = []
        self.deadlines: list[float | None] = []
        self.failures: list[grpc.StatusCode] = []
        self.hang = False
        self.release = threading.Event()
        self.cancelled = threading.Event()
        self.later: list[vm_service_pb2.WatchVirtualMachinesResponse] = []
        self.watch_ends: list[grpc.StatusCode] = []  # each Watch call ends with the next one
        self.watch_floor = 0  # a Watch resuming from below this version is OUT_OF_RANGE
        self.before_watch: list[Callable[[], None]] = []  # each Watch call runs the next one
        self.after_start: vm_pb2.Phase.ValueType = vm_pb2.PHASE_RUNNING
        self.console: Sequence[bytes] = (b"booting\n", b"\x1b[0mlogin: ")

    def add(
        self,
        name: str,
        phase: vm_pb2.Phase.ValueType = vm_pb2.PHASE_STOPPED,
        namespace: str = "default",
        grace: int | None = None,
    ) -> vm_pb2.VirtualMachine:
        vm = vm_pb2.VirtualMachine()
        vm.metadata.namespace, vm.metadata.name = namespace, name
        vm.status.phase = phase
        if grace is not None:
            vm.spec.template.spec.termination_grace_period_seconds = grace
        self.vms[(namespace, name)] = vm
        return vm

    def said(self) -> list[str]:
        """The recorded calls as short strings, e.g. ["apply", "stop force=True grace=0"]."""
        return [_SAID[method](request) for method, request in self.calls]

    def _enter(self, method: str, request: Any, context: Any) -> None:
        self.calls.append((method, request))
        self.deadlines.append(context.time_remaining())
        if self.hang:
            self.release.wait(10)
        if self.failures:
            context.abort(self.failures.pop(0), f"{method} failed on purpose")

    def _vm(self, request: Any, context: Any) -> vm_pb2.VirtualMachine:
        vm = self.vms.get((request.namespace, request.name))
        if vm is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"vm {request.namespace}/{request.name}")
        assert vm is not None  # abort raised
        return vm

    def _listed(self, namespace: str) -> list[vm_pb2.VirtualMachine]:
        """The VMs of a namespace, or of all namespaces for "" (as the agent does)."""
        return [vm for (ns, _), vm in sorted(self.vms.items()) if namespace in ("", ns)]

    def ApplyVirtualMachine(self, request: Any, context: Any) -> Any:
        self._enter("Apply", request, context)
        key = (request.vm.metadata.namespace, request.vm.metadata.name)
        old = self.vms.get(key)
        changed = old is None or old.spec != request.vm.spec
        vm = vm_pb2.VirtualMachine()
        vm.CopyFrom(request.vm)
        vm.metadata.generation = (old.metadata.generation if old else 0) + int(changed)
        if old is not None:
            vm.status.CopyFrom(old.status)
        self.vms[key] = vm
        return vm_service_pb2.ApplyVirtualMachineResponse(vm=vm, changed=changed)

    def GetVirtualMachine(self, request: Any, context: Any) -> Any:
        self._enter("Get", request, context)
        return vm_service_pb2.GetVirtualMachineResponse(vm=self._vm(request, context))

    def ListVirtualMachines(self, request: Any, context: Any) -> Any:
        self._enter("List", request, context)
        vms = self._listed(request.namespace)
        return vm_service_pb2.ListVirtualMachinesResponse(vms=vms, resource_version=7)

    def WatchVirtualMachines(self, request: Any, context: Any) -> Iterator[Any]:
        self._enter("Watch", request, context)
        if self.before_watch:
            self.before_watch.pop(0)()
        since = request.resource_version
        if 0 < since < self.watch_floor:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, "too old; list the VMs again")
        if not since:
            for vm in self._listed(request.namespace):
                yield vm_service_pb2.WatchVirtualMachinesResponse(
                    type=vm_service_pb2.EVENT_TYPE_ADDED, vm=vm
                )
        yield vm_service_pb2.WatchVirtualMachinesResponse(type=vm_service_pb2.EVENT_TYPE_SYNCED)
        yield from (e for e in self.later if not since or e.resource_version > since)
        if self.watch_ends:
            context.abort(self.watch_ends.pop(0), "the stream was lost")

    def _turn(
        self, method: str, request: Any, context: Any, phase: vm_pb2.Phase.ValueType
    ) -> vm_pb2.VirtualMachine:
        """Record the call and put the VM in ``phase``; Stop refuses a VM that is not running."""
        self._enter(method, request, context)
        vm = self._vm(request, context)
        if method == "Stop" and vm.status.phase != vm_pb2.PHASE_RUNNING:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "vm is not running")
        vm.status.phase = phase
        return vm

    def StartVirtualMachine(self, request: Any, context: Any) -> Any:
        vm = self._turn("Start", request, context, self.after_start)
        return vm_service_pb2.StartVirtualMachineResponse(vm=vm)

    def StopVirtualMachine(self, request: Any, context: Any) -> Any:
        vm = self._turn("Stop", request, context, vm_pb2.PHASE_STOPPED)
        return vm_service_pb2.StopVirtualMachineResponse(vm=vm)

    def RestartVirtualMachine(self, request: Any, context: Any) -> Any:
        self._enter("Restart", request, context)
        return vm_service_pb2.RestartVirtualMachineResponse(vm=self._vm(request, context))

    def PauseVirtualMachine(self, request: Any, context: Any) -> Any:
        vm = self._turn("Pause", request, context, vm_pb2.PHASE_PAUSED)
        return vm_service_pb2.PauseVirtualMachineResponse(vm=vm)

    def ResumeVirtualMachine(self, request: Any, context: Any) -> Any:
        vm = self._turn("Resume", request, context, vm_pb2.PHASE_RUNNING)
        return vm_service_pb2.ResumeVirtualMachineResponse(vm=vm)

    def DeleteVirtualMachine(self, request: Any, context: Any) -> Any:
        self._enter("Delete", request, context)
        self.vms.pop((request.namespace, request.name), None)
        return vm_service_pb2.DeleteVirtualMachineResponse()

    def GetConsoleLog(self, request: Any, context: Any) -> Iterator[Any]:
        self._enter("Console", request, context)
        if request.follow:  # a followed log never ends: termination means cancellation
            context.add_callback(self.cancelled.set)
        for chunk in self.console:
            yield vm_service_pb2.GetConsoleLogResponse(data=chunk)
        while request.follow and context.is_active():
            time.sleep(0.01)

    def GetNode(self, request: Any, context: Any) -> Any:
        self._enter("GetNode", request, context)
        return node_service_pb2.GetNodeResponse(node=node_service_pb2.Node(name="node-1"))


def serve(fake: FakeAgent, address: str, credentials: Any = None) -> tuple[Any, int]:
    """Start a gRPC server with both services on ``address``; returns it and its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    vm_service_pb2_grpc.add_VirtualMachineServiceServicer_to_server(fake, server)
    node_service_pb2_grpc.add_NodeServiceServicer_to_server(fake, server)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    server.start()
    return server, port
