"""Thin gRPC servicers: validate → convert → call the service → convert back."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

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
from agent.api.paging import PAGE_BYTES, one_page
from agent.api.slots import CallSlots
from agent.domain.lifecycle import VMService
from agent.domain.views import VMViews
from agent.domain.vmcache import VMCache
from agent.errors import InvalidSpec, Unsupported
from agent.models import MAX_GRACE_PERIOD_SECONDS
from agent.ports import HostProbe, HypervisorVersions
from agent.spec import validate_name
from agent.spec.limits import check_capacity

__all__ = ["MigrationServicer", "NodeServicer", "VirtualMachineServicer"]

_EVENT_TYPES = {
    "SYNCED": pb.EVENT_TYPE_SYNCED,
    "ADDED": pb.EVENT_TYPE_ADDED,
    "MODIFIED": pb.EVENT_TYPE_MODIFIED,
    "DELETED": pb.EVENT_TYPE_DELETED,
}


class _NamedRequest(Protocol):
    namespace: str
    name: str


def _names(request: _NamedRequest) -> tuple[str, str]:
    return validate_name("namespace", request.namespace), validate_name("name", request.name)


def _grace(request: Any) -> int | None:
    if not request.HasField("grace_period_seconds"):
        return None
    if not 0 <= request.grace_period_seconds <= MAX_GRACE_PERIOD_SECONDS:
        raise InvalidSpec(
            "grace_period_seconds", f"must be between 0 and {MAX_GRACE_PERIOD_SECONDS} seconds"
        )
    return int(request.grace_period_seconds)


def _cancellation(context: grpc.ServicerContext, cache: VMCache) -> Callable[[], bool]:
    """Whether the client went away: a long wait (a graceful stop) then ends and frees its
    slot and its VM. The VM cache is poked so that waits on it notice at once."""
    ended = threading.Event()

    def on_end() -> None:
        ended.set()
        cache.poke()

    context.add_callback(on_end)
    return lambda: ended.is_set() and not context.is_active()


class VirtualMachineServicer(vm_grpc.VirtualMachineServiceServicer):
    """virtagent.v1.VirtualMachineService: verbs go to the VMService, reads to the VMViews."""

    def __init__(
        self,
        service: VMService,
        views: VMViews,
        *,
        max_streams: int = 16,
        max_slow: int = 32,
        host: HostProbe | None = None,
    ) -> None:
        self.service = service
        self.views = views
        self.host = host  # the node's size, to refuse VMs larger than it (None: unchecked)
        self.streams = CallSlots(max_streams, "watch streams (VMs, consoles, migrations)")
        # Every mutating call: each may wait on libvirt, a VM's lock or an image pull.
        self.slow_calls = CallSlots(max_slow, "mutating calls (apply/start/stop/...)")
        self.page_bytes = PAGE_BYTES

    @grpc_errors
    def ApplyVirtualMachine(
        self, request: pb.ApplyVirtualMachineRequest, context: grpc.ServicerContext
    ) -> pb.ApplyVirtualMachineResponse:
        spec = spec_from_proto(request.vm)
        if self.host is not None:
            facts = self.host.facts()
            check_capacity(spec, facts.cpus, facts.memory_bytes)
        with self.slow_calls.take():
            record, changed = self.service.apply(spec, request.request_id)
        return pb.ApplyVirtualMachineResponse(vm=vm_to_proto(record), changed=changed)

    @grpc_errors
    def GetVirtualMachine(
        self, request: pb.GetVirtualMachineRequest, context: grpc.ServicerContext
    ) -> pb.GetVirtualMachineResponse:
        return pb.GetVirtualMachineResponse(vm=vm_to_proto(self.views.get(*_names(request))))

    @grpc_errors
    def ListVirtualMachines(
        self, request: pb.ListVirtualMachinesRequest, context: grpc.ServicerContext
    ) -> pb.ListVirtualMachinesResponse:
        records, version = self.views.list(request.namespace, request.label_selector)
        vms, next_token = one_page(
            records,
            key=lambda r: (r.spec.namespace, r.spec.name),
            convert=vm_to_proto,
            page_size=request.page_size,
            page_token=request.page_token,
            filters=(request.namespace, request.label_selector),
            max_bytes=self.page_bytes,
        )
        return pb.ListVirtualMachinesResponse(
            vms=vms, resource_version=version, next_page_token=next_token
        )

    @grpc_stream_errors
    def WatchVirtualMachines(
        self, request: pb.WatchVirtualMachinesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchVirtualMachinesResponse]:
        if request.resource_version < 0:
            raise InvalidSpec("resource_version", "must not be negative")
        items = self.views.watch(
            request.namespace,
            request.label_selector,
            keep_going=context.is_active,
            since=request.resource_version,
        )
        with self.streams.take():
            for item in items:
                yield pb.WatchVirtualMachinesResponse(
                    type=_EVENT_TYPES[item.type],
                    vm=vm_to_proto(item.record) if item.record is not None else None,
                    resource_version=item.resource_version,
                )

    @grpc_errors
    def StartVirtualMachine(
        self, request: pb.StartVirtualMachineRequest, context: grpc.ServicerContext
    ) -> pb.StartVirtualMachineResponse:
        names = _names(request)
        with self.slow_calls.take():
            record = self.service.start(*names, request.request_id)
        return pb.StartVirtualMachineResponse(vm=vm_to_proto(record))

    @grpc_errors
    def StopVirtualMachine(
        self, request: pb.StopVirtualMachineRequest, context: grpc.ServicerContext
    ) -> pb.StopVirtualMachineResponse:
        names, grace = _names(request), _grace(request)
        with self.slow_calls.take():
            record = self.service.stop(
                *names,
                grace_period=grace,
                force=request.force,
                request_id=request.request_id,
                cancelled=_cancellation(context, self.service.cache),
            )
        return pb.StopVirtualMachineResponse(vm=vm_to_proto(record))

    @grpc_errors
    def RestartVirtualMachine(
        self, request: pb.RestartVirtualMachineRequest, context: grpc.ServicerContext
    ) -> pb.RestartVirtualMachineResponse:
        names = _names(request)
        with self.slow_calls.take():
            record = self.service.restart(*names, hard=request.hard, request_id=request.request_id)
        return pb.RestartVirtualMachineResponse(vm=vm_to_proto(record))

    @grpc_errors
    def PauseVirtualMachine(
        self, request: pb.PauseVirtualMachineRequest, context: grpc.ServicerContext
    ) -> pb.PauseVirtualMachineResponse:
        names = _names(request)
        with self.slow_calls.take():
            record = self.service.pause(*names, request.request_id)
        return pb.PauseVirtualMachineResponse(vm=vm_to_proto(record))

    @grpc_errors
    def ResumeVirtualMachine(
        self, request: pb.ResumeVirtualMachineRequest, context: grpc.ServicerContext
    ) -> pb.ResumeVirtualMachineResponse:
        names = _names(request)
        with self.slow_calls.take():
            record = self.service.resume(*names, request.request_id)
        return pb.ResumeVirtualMachineResponse(vm=vm_to_proto(record))

    @grpc_errors
    def DeleteVirtualMachine(
        self, request: pb.DeleteVirtualMachineRequest, context: grpc.ServicerContext
    ) -> pb.DeleteVirtualMachineResponse:
        names, grace = _names(request), _grace(request)
        with self.slow_calls.take():
            self.service.delete(
                *names,
                grace_period=grace,
                request_id=request.request_id,
                cancelled=_cancellation(context, self.service.cache),
            )
        return pb.DeleteVirtualMachineResponse()

    @grpc_stream_errors
    def GetConsoleLog(
        self, request: pb.GetConsoleLogRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetConsoleLogResponse]:
        if request.tail_lines < 0:
            raise InvalidSpec("tail_lines", "must not be negative")
        chunks = self.views.console(
            *_names(request),
            tail_lines=request.tail_lines,
            follow=request.follow,
            keep_going=context.is_active,
        )
        # Only a followed log holds its stream open: it counts against the stream limit.
        with self.streams.take() if request.follow else contextlib.nullcontext():
            for chunk in chunks:
                yield pb.GetConsoleLogResponse(data=chunk)


class NodeServicer(node_grpc.NodeServiceServicer):
    """virtagent.v1.NodeService: capacity, versions and VM counts."""

    def __init__(
        self,
        service: VMService,
        views: VMViews,
        host: HostProbe,
        versions: HypervisorVersions,
        *,
        reserved_memory: int,
    ) -> None:
        self.service = service
        self.views = views
        self.host = host
        self.versions = versions
        self.reserved_memory = reserved_memory

    @grpc_errors
    def GetNode(
        self, request: node_pb2.GetNodeRequest, context: grpc.ServicerContext
    ) -> node_pb2.GetNodeResponse:
        facts = self.host.facts()
        libvirt_version, qemu_version = self.versions.versions()
        counts = self.views.phase_counts()
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
    """virtagent.v1.MigrationService where migrations are not wired (unit-test servers):
    UNIMPLEMENTED. The agent serves ``agent.api.migrations.MigrationApi``."""

    def _unsupported(self) -> None:
        raise Unsupported("live migration is not enabled in this server")

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

    @grpc_errors
    def GetMigration(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._unsupported()
        return mig_pb2.GetMigrationResponse()

    @grpc_errors
    def ListMigrations(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._unsupported()
        return mig_pb2.ListMigrationsResponse()

    @grpc_errors
    def UpdateMigration(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._unsupported()
        return mig_pb2.UpdateMigrationResponse()

    @grpc_errors
    def FinishMigrationTarget(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._unsupported()
        return mig_pb2.FinishMigrationTargetResponse()
