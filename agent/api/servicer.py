"""Thin gRPC servicers: validate → convert → call the service → convert back."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from agent import __version__
from agent.api._gen.virtagent.v1 import (
    migration_service_pb2 as mig_pb2,
)
from agent.api._gen.virtagent.v1 import (
    migration_service_pb2_grpc as mig_grpc,
)
from agent.api._gen.virtagent.v1 import (
    node_service_pb2 as node_pb2,
)
from agent.api._gen.virtagent.v1 import (
    node_service_pb2_grpc as node_grpc,
)
from agent.api._gen.virtagent.v1 import (
    vm_service_pb2 as pb,
)
from agent.api._gen.virtagent.v1 import (
    vm_service_pb2_grpc as vm_grpc,
)
from agent.api.convert import spec_from_proto, vm_to_proto
from agent.api.errors import grpc_errors, grpc_stream_errors
from agent.domain.lifecycle import VMService
from agent.errors import Conflict, InvalidSpec, ResourceExhausted, Unsupported
from agent.labels import matches_selector, parse_selector
from agent.ports import HostProbe
from agent.spec import validate_name

__all__ = ["MigrationServicer", "NodeServicer", "VirtualMachineServicer"]

_EVENT_TYPES = {
    "ADDED": pb.EVENT_TYPE_ADDED,
    "MODIFIED": pb.EVENT_TYPE_MODIFIED,
    "DELETED": pb.EVENT_TYPE_DELETED,
}
_CONSOLE_CHUNK = 64 * 1024
_FOLLOW_POLL_SECONDS = 0.2


def _names(request: Any) -> tuple[str, str]:
    return validate_name("namespace", request.namespace), validate_name("name", request.name)


def _grace(request: Any) -> int | None:
    if not request.HasField("grace_period_seconds"):
        return None
    if request.grace_period_seconds < 0:
        raise InvalidSpec("grace_period_seconds", "must not be negative")
    return int(request.grace_period_seconds)


class _Slots:
    """At most ``limit`` calls of a kind at once; one more is refused, not queued.

    Every call holds a server thread while it runs: streams for as long as they are open,
    Stop and Delete for a grace period, Apply for an image pull. Capping them keeps threads
    free for quick calls and health checks (a starved liveness probe restarts the agent).
    """

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self._what = what
        self._free = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def take(self) -> Iterator[None]:
        if not self._free.acquire(blocking=False):
            raise ResourceExhausted(f"{self.limit} {self._what} are running on this agent; retry")
        try:
            yield
        finally:
            self._free.release()


class VirtualMachineServicer(vm_grpc.VirtualMachineServiceServicer):
    """virtagent.v1.VirtualMachineService over a VMService."""

    def __init__(self, service: VMService, *, max_streams: int = 16, max_slow: int = 32) -> None:
        self.service = service
        self.streams = _Slots(max_streams, "watch/console streams")
        self.slow_calls = _Slots(max_slow, "apply/start/stop/restart/delete calls")

    @grpc_errors
    def ApplyVirtualMachine(self, request: Any, context: grpc.ServicerContext) -> Any:
        spec = spec_from_proto(request.vm)
        with self.slow_calls.take():
            record, changed = self.service.apply(spec, request.request_id)
        return pb.ApplyVirtualMachineResponse(vm=vm_to_proto(record), changed=changed)

    @grpc_errors
    def GetVirtualMachine(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.GetVirtualMachineResponse(vm=vm_to_proto(self.service.get(*_names(request))))

    @grpc_errors
    def ListVirtualMachines(self, request: Any, context: grpc.ServicerContext) -> Any:
        version = self.service.registry.resource_version
        records = self.service.list(request.namespace, request.label_selector)
        return pb.ListVirtualMachinesResponse(
            vms=[vm_to_proto(r) for r in records], resource_version=version
        )

    @grpc_stream_errors
    def WatchVirtualMachines(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        requirements = parse_selector(request.label_selector)

        def wanted(spec: Any) -> bool:
            in_namespace = not request.namespace or spec.namespace == request.namespace
            return in_namespace and matches_selector(spec.labels, requirements)

        with self.streams.take():
            yield from self._watch(request, context, wanted)

    def _watch(
        self, request: Any, context: grpc.ServicerContext, wanted: Callable[[Any], bool]
    ) -> Iterator[Any]:
        snapshot, version, watch = self.service.registry.watch()
        try:
            for item in sorted(snapshot, key=lambda r: (r.spec.namespace, r.spec.name)):
                if wanted(item.spec):
                    yield pb.WatchVirtualMachinesResponse(
                        type=pb.EVENT_TYPE_ADDED, vm=vm_to_proto(item), resource_version=version
                    )
            yield pb.WatchVirtualMachinesResponse(
                type=pb.EVENT_TYPE_SYNCED, resource_version=version
            )
            while context.is_active():
                event = watch.next_event(timeout=1.0)
                if event is None:
                    continue
                if event.record is None:
                    raise Conflict("the watch fell behind the node's changes; list and watch again")
                if wanted(event.record.spec):
                    yield pb.WatchVirtualMachinesResponse(
                        type=_EVENT_TYPES[event.type],
                        vm=vm_to_proto(event.record),
                        resource_version=event.resource_version,
                    )
        finally:
            watch.close()

    @grpc_errors
    def StartVirtualMachine(self, request: Any, context: grpc.ServicerContext) -> Any:
        names = _names(request)
        with self.slow_calls.take():
            record = self.service.start(*names, request.request_id)
        return pb.StartVirtualMachineResponse(vm=vm_to_proto(record))

    @grpc_errors
    def StopVirtualMachine(self, request: Any, context: grpc.ServicerContext) -> Any:
        names, grace = _names(request), _grace(request)
        with self.slow_calls.take():
            record = self.service.stop(
                *names, grace_period=grace, force=request.force, request_id=request.request_id
            )
        return pb.StopVirtualMachineResponse(vm=vm_to_proto(record))

    @grpc_errors
    def RestartVirtualMachine(self, request: Any, context: grpc.ServicerContext) -> Any:
        names = _names(request)
        with self.slow_calls.take():
            record = self.service.restart(*names, hard=request.hard, request_id=request.request_id)
        return pb.RestartVirtualMachineResponse(vm=vm_to_proto(record))

    @grpc_errors
    def PauseVirtualMachine(self, request: Any, context: grpc.ServicerContext) -> Any:
        record = self.service.pause(*_names(request), request.request_id)
        return pb.PauseVirtualMachineResponse(vm=vm_to_proto(record))

    @grpc_errors
    def ResumeVirtualMachine(self, request: Any, context: grpc.ServicerContext) -> Any:
        record = self.service.resume(*_names(request), request.request_id)
        return pb.ResumeVirtualMachineResponse(vm=vm_to_proto(record))

    @grpc_errors
    def DeleteVirtualMachine(self, request: Any, context: grpc.ServicerContext) -> Any:
        names, grace = _names(request), _grace(request)
        with self.slow_calls.take():
            self.service.delete(*names, grace_period=grace, request_id=request.request_id)
        return pb.DeleteVirtualMachineResponse()

    @grpc_stream_errors
    def GetConsoleLog(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if request.tail_lines < 0:
            raise InvalidSpec("tail_lines", "must not be negative")
        namespace, name = _names(request)
        path = self.service.console_log_path(namespace, name)
        if not request.follow:
            yield from self._console(request, context, path)
            return
        with self.streams.take():
            yield from self._console(request, context, path)

    def _console(self, request: Any, context: grpc.ServicerContext, path: str) -> Iterator[Any]:
        namespace, name = request.namespace, request.name
        offset = _tail_offset(path, request.tail_lines)
        while True:
            start = offset
            for offset, chunk in _read_from(path, start):  # noqa: B007 - offset is the resume point
                yield pb.GetConsoleLogResponse(data=chunk)
            if not request.follow or not context.is_active():
                return
            self.service.get(namespace, name)  # ends the stream once the VM is deleted
            time.sleep(_FOLLOW_POLL_SECONDS)


def _tail_offset(path: str, lines: int) -> int:
    """Byte offset where the last ``lines`` lines start (0: the whole file)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return 0
    if lines == 0:
        return 0
    with open(path, "rb") as handle:
        block, found, position = 8192, 0, size
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step)
            for index in range(len(data) - 1, -1, -1):
                if data[index] == 0x0A and position + index < size - 1:
                    found += 1
                    if found == lines:
                        return position + index + 1
    return 0


def _read_from(path: str, offset: int) -> Iterator[tuple[int, bytes]]:
    """Chunks of the log from ``offset``, each with the offset after it; read as they are sent."""
    try:
        # O_NOFOLLOW: the log lives in a folder QEMU's user can write; never follow a swap.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    with os.fdopen(fd, "rb") as handle:
        if os.fstat(handle.fileno()).st_size < offset:
            offset = 0  # the log was truncated (new boot): start over
        handle.seek(offset)
        while chunk := handle.read(_CONSOLE_CHUNK):
            offset += len(chunk)
            yield offset, chunk


class NodeServicer(node_grpc.NodeServiceServicer):
    """virtagent.v1.NodeService: capacity, versions and VM counts."""

    def __init__(self, service: VMService, host: HostProbe, *, reserved_memory: int) -> None:
        self.service = service
        self.host = host
        self.reserved_memory = reserved_memory

    @grpc_errors
    def GetNode(self, request: Any, context: grpc.ServicerContext) -> Any:
        facts = self.host.facts()
        libvirt_version, qemu_version = self.service.hv.versions()
        counts: dict[str, int] = {}
        for record in self.service.registry.records():
            phase = record.status.phase.value
            counts[phase] = counts.get(phase, 0) + 1
        node = node_pb2.Node(
            name=self.service.node_name,
            cpu_capacity=facts.cpus,
            cpu_allocatable=facts.cpus,
            memory_capacity_bytes=facts.memory_bytes,
            memory_allocatable_bytes=max(0, facts.memory_bytes - self.reserved_memory),
            libvirt_version=libvirt_version,
            qemu_version=qemu_version,
            virt_type=self.service.virt_type,
            cpu_model=facts.cpu_model,
            vm_counts=counts,
            agent_version=__version__,
        )
        return node_pb2.GetNodeResponse(node=node)


class MigrationServicer(mig_grpc.MigrationServiceServicer):
    """virtagent.v1.MigrationService: declared, answered UNIMPLEMENTED until migration lands."""

    def _unsupported(self) -> None:
        raise Unsupported("live migration is not implemented by this agent yet")

    @grpc_errors
    def PrepareMigrationTarget(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._unsupported()
        return mig_pb2.PrepareMigrationTargetResponse()

    @grpc_errors
    def MigrateVirtualMachine(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._unsupported()
        return mig_pb2.MigrateVirtualMachineResponse()

    @grpc_errors
    def CancelMigration(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._unsupported()
        return mig_pb2.CancelMigrationResponse()

    @grpc_stream_errors
    def WatchMigration(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._unsupported()
        yield mig_pb2.WatchMigrationResponse()
