"""create_server: the gRPC server with the agent's services, health and reflection."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agent.api._gen.virtagent.v1 import (
    migration_service_pb2,
    migration_service_pb2_grpc,
    node_service_pb2,
    node_service_pb2_grpc,
    vm_service_pb2,
    vm_service_pb2_grpc,
)
from agent.api.access import Access, AccessInterceptor
from agent.api.admission import AdmissionInterceptor, CallPool
from agent.api.deadline import DeadlineInterceptor
from agent.api.errors import grpc_stream_errors
from agent.api.interceptor import MetricsInterceptor
from agent.api.servicer import MigrationServicer, NodeServicer, VirtualMachineServicer
from agent.api.slots import CallSlots

# The longest a unary call may run: the longest graceful stop (3600 s) and then some.
DEFAULT_MAX_CALL_SECONDS = 3900.0

__all__ = ["HEALTH_SERVICES", "QUICK_CALL_THREADS", "Server", "create_server"]

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Transport bounds: a client may not hold the agent's resources open for free.
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_concurrent_streams", 100),  # per connection
    ("grpc.keepalive_time_ms", 60_000),  # ping idle connections to find dead peers
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),  # refuse ping floods ...
    ("grpc.http2.max_ping_strikes", 2),  # ... closing connections that keep pinging
    ("grpc.max_connection_idle_ms", 15 * 60_000),
    ("grpc.server_handshake_timeout_ms", 20_000),  # a TLS handshake may not linger
]
# Calls in progress or waiting for a thread; one more is RESOURCE_EXHAUSTED before it takes
# one, except health checks (agent.api.admission).
MAX_CONCURRENT_CALLS = 256
# grpc's own limit, health checks included: only a flood of refusals faster than the pool
# can answer them reaches it.
_HARD_LIMIT_FACTOR = 4
# Threads no long call may take (streams and mutating calls have their own caps): reads and
# health checks always find one.
QUICK_CALL_THREADS = 16
HEALTH_SERVICES = (
    "",
    "virtagent.v1.VirtualMachineService",
    "virtagent.v1.NodeService",
)


class _Health(health.HealthServicer):  # type: ignore[misc]
    """grpc's health service, whose Watch (a stream that holds a server thread while it is
    open, behind the interceptors) takes one of the stream slots like any other watch."""

    def __init__(self, streams: CallSlots) -> None:
        super().__init__(experimental_non_blocking=False)
        self.streams = streams

    @grpc_stream_errors
    def Watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with self.streams.take():
            yield from super().Watch(request, context)


@dataclass
class Server:
    """A started-but-not-serving gRPC server, its bound ports and its health servicer."""

    grpc_server: grpc.Server
    ports: list[int]
    health: health.HealthServicer
    pool: CallPool | None = None  # the threads that run the calls

    def stop(self, grace: float | None) -> None:
        """Stop serving (in-flight calls get ``grace`` seconds), then end the call threads
        (grpc leaves a pool it was given running)."""
        self.grpc_server.stop(grace).wait()
        if self.pool is not None:
            self.pool.shutdown(wait=False)

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in HEALTH_SERVICES:
            self.health.set(service, status)


def create_server(
    vm: VirtualMachineServicer,
    node: NodeServicer,
    *,
    listen: list[str],
    unix_socket: str = "",
    credentials: grpc.ServerCredentials | None = None,
    reflection_enabled: bool = True,
    access: Access | None = None,
    max_workers: int = 64,  # > streams (16) + slow calls (32): room for quick calls
    migrations: Any = None,  # a MigrationService servicer; None: answers UNIMPLEMENTED
    max_call_seconds: float = DEFAULT_MAX_CALL_SECONDS,
    max_calls: int = MAX_CONCURRENT_CALLS,
) -> Server:
    """Bind every address (``host:port``, port 0 picks one) and the unix socket; not started.

    ``access`` decides who may call what (default: anyone who reaches a port is the control
    plane, as without mTLS).
    """
    pool = CallPool(max_workers=max_workers)
    server = grpc.server(
        pool,
        # Metrics outside admission and access control: refused calls are counted too.
        interceptors=[
            MetricsInterceptor(),
            AdmissionInterceptor(pool, max_calls),
            AccessInterceptor(access or Access(mtls=False)),
            DeadlineInterceptor(max_call_seconds),
        ],
        options=_OPTIONS,
        maximum_concurrent_rpcs=max_calls * _HARD_LIMIT_FACTOR,
    )
    vm_service_pb2_grpc.add_VirtualMachineServiceServicer_to_server(vm, server)
    node_service_pb2_grpc.add_NodeServiceServicer_to_server(node, server)
    migration_service_pb2_grpc.add_MigrationServiceServicer_to_server(
        migrations or MigrationServicer(), server
    )
    health_servicer = _Health(vm.streams)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection_enabled:
        _enable_reflection(server)
    if credentials is not None:
        ports = [server.add_secure_port(address, credentials) for address in listen]
    else:
        ports = [server.add_insecure_port(address) for address in listen]
    if unix_socket:
        _bind_unix_socket(server, unix_socket)
    result = Server(grpc_server=server, ports=ports, health=health_servicer, pool=pool)
    result.set_serving(False)
    return result


def _bind_unix_socket(server: grpc.Server, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)  # left over from a previous run
    server.add_insecure_port(f"unix:{path}")
    # Callers on the socket are the control plane: only root may connect, whatever the umask.
    os.chmod(path, 0o600)


def _enable_reflection(server: grpc.Server) -> None:
    names = [
        vm_service_pb2.DESCRIPTOR.services_by_name["VirtualMachineService"].full_name,
        node_service_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
        migration_service_pb2.DESCRIPTOR.services_by_name["MigrationService"].full_name,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
    ]
    reflection.enable_server_reflection(names, server)
