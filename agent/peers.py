"""The target agent over gRPC, with this node's TLS settings (a MigrationTarget port)."""

from __future__ import annotations

from collections.abc import Mapping

from agent.api._gen.virtagent.v1 import migration_service_pb2 as mpb
from agent.client import AgentCallError, AgentClient, TLSOptions
from agent.errors import AgentError, FailedPrecondition, ResourceExhausted, Unavailable
from agent.migration.ports import PreparedTarget
from agent.ports import JobSample

__all__ = ["GrpcTargetAgents"]

_PREPARE_SECONDS = 600.0  # an image pull on the target may take a while
_CALL_SECONDS = 15.0
_CHECK_SECONDS = 10.0  # the target's checks before MigrateVirtualMachine answers


class GrpcTarget:
    """One target agent; errors become the agent's own, naming the target."""

    def __init__(self, client: AgentClient, source_node: str) -> None:
        self.client = client
        self.source_node = source_node

    def prepare(
        self,
        migration_id: str,
        namespace: str,
        name: str,
        metadata_xml: str,
        memory_bytes: int,
        *,
        validate_only: bool = False,
        post_copy: bool = False,
        digests: Mapping[str, str] | None = None,
    ) -> PreparedTarget:
        if not validate_only:
            self._check_reachable(namespace, name)
        request = mpb.PrepareMigrationTargetRequest(
            migration_id=migration_id, namespace=namespace, name=name,
            metadata_xml=metadata_xml, source_node=self.source_node, memory_bytes=memory_bytes,
            validate_only=validate_only, post_copy=post_copy,
            container_disk_digests=dict(digests or {}),
        )  # fmt: skip
        timeout = _CHECK_SECONDS if validate_only else _PREPARE_SECONDS
        try:
            answer = self.client.prepare_migration_target(request, timeout=timeout)
        except AgentCallError as exc:
            raise _error(exc, "checking" if validate_only else "preparing") from exc
        return PreparedTarget(
            libvirt_uri=answer.libvirt_uri,
            migration_uri=answer.migration_uri,
            node_name=answer.node_name,
            domain_xml=answer.domain_xml,
        )

    def _check_reachable(self, namespace: str, name: str) -> None:
        """A quick call first: an unreachable target fails in seconds, not at the long
        deadline a prepare (which may pull an image) has. (A MigrationService call: a peer
        agent may call nothing else.)"""
        try:
            self.client.list_migrations(namespace, name)
        except AgentCallError as exc:
            raise _error(exc, "reaching") from exc

    def finish(self, migration_id: str, *, succeeded: bool, message: str) -> tuple[int, JobSample]:
        try:
            reply = self.client.finish_migration_target(
                migration_id, succeeded=succeeded, message=message
            )
        except AgentCallError as exc:
            raise _error(exc, "finishing") from exc
        return int(reply.downtime_ms), progress_from_proto(reply.progress)

    def close(self) -> None:
        self.client.close()


class GrpcTargetAgents:
    """Connects to target agents: TLS (with this node's certificate as client certificate)
    when the node serves TLS, plaintext only when it runs with --insecure."""

    def __init__(self, source_node: str, tls: TLSOptions | None) -> None:
        self.source_node = source_node
        self.tls = tls

    def connect(self, address: str) -> GrpcTarget:
        client = AgentClient(address, tls=self.tls, timeout=_CALL_SECONDS, retries=2)
        return GrpcTarget(client, self.source_node)


def progress_from_proto(message: mpb.MigrationProgress) -> JobSample:
    return JobSample(
        elapsed_ms=message.elapsed_ms,
        data_total=message.data_total_bytes,
        data_processed=message.data_processed_bytes,
        data_remaining=message.data_remaining_bytes,
        memory_iteration=message.memory_iteration,
        memory_bps=message.memory_bandwidth_bytes_per_second,
        disk_total=message.disk_total_bytes,
        disk_processed=message.disk_processed_bytes,
        page_size=1,  # dirty rate travels in bytes/s
        dirty_rate=message.dirty_rate_bytes_per_second,
    )


def _error(exc: AgentCallError, doing: str) -> AgentError:
    message = f"target agent {exc.target}: {doing} the migration: {exc.code.name}: {exc.message}"
    name = exc.code.name
    if name == "RESOURCE_EXHAUSTED":
        return ResourceExhausted(message)
    if name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return Unavailable(message)
    return FailedPrecondition(message)
