"""The MigrationService servicer (thin) and its message conversions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from agent.api._gen.virtagent.v1 import migration_service_pb2 as mpb
from agent.api._gen.virtagent.v1 import migration_service_pb2_grpc as mgrpc
from agent.api.convert import timestamp
from agent.api.errors import grpc_errors, grpc_stream_errors
from agent.api.slots import CallSlots
from agent.errors import InvalidSpec
from agent.migration.policy import ABORT, POST_COPY, MigrationOptions
from agent.migration.records import SOURCE, MigrationRecord, State
from agent.migration.service import Migrations
from agent.ports import JobSample
from agent.spec import validate_name

__all__ = ["MIGRATION_CALLS", "MigrationApi", "migration_to_proto", "options_from_proto"]

# Migration calls that may block (Migrate waits on the target agent, up to ~30 s if it does
# not answer; Prepare, Finish, Cancel and Update on libvirt) at once; their threads are added
# to the server's pool (agent.app), apart from the VM verbs' so neither starves the other.
MIGRATION_CALLS = 16

_STATES = {
    State.PENDING: mpb.MIGRATION_STATE_PENDING,
    State.PREPARING: mpb.MIGRATION_STATE_PREPARING,
    State.RUNNING: mpb.MIGRATION_STATE_RUNNING,
    State.POST_COPY: mpb.MIGRATION_STATE_POST_COPY,
    State.SUCCEEDED: mpb.MIGRATION_STATE_SUCCEEDED,
    State.FAILED: mpb.MIGRATION_STATE_FAILED,
    State.CANCELLED: mpb.MIGRATION_STATE_CANCELLED,
}
_ON_TIMEOUT = {
    mpb.MIGRATION_TIMEOUT_ACTION_UNSPECIFIED: ABORT,
    mpb.MIGRATION_TIMEOUT_ACTION_ABORT: ABORT,
    mpb.MIGRATION_TIMEOUT_ACTION_POST_COPY: POST_COPY,
}


def options_from_proto(message: Any) -> MigrationOptions:
    """Zero fields take the defaults; the result is validated (errors name the field)."""
    defaults = MigrationOptions()
    if message.on_timeout not in _ON_TIMEOUT:
        raise InvalidSpec("options.on_timeout", f"unknown action {message.on_timeout}")
    return MigrationOptions(
        bandwidth_mib=message.bandwidth_mib_per_second,
        max_downtime_ms=message.max_downtime_ms or defaults.max_downtime_ms,
        auto_converge=message.allow_auto_converge,
        post_copy=message.allow_post_copy,
        parallel_connections=message.parallel_connections or defaults.parallel_connections,
        progress_timeout_s=message.progress_timeout_seconds or defaults.progress_timeout_s,
        completion_timeout_per_gib_s=(
            message.completion_timeout_per_gib_seconds or defaults.completion_timeout_per_gib_s
        ),
        on_timeout=_ON_TIMEOUT[message.on_timeout],
    ).validate("options")


def _options_to_proto(options: MigrationOptions) -> mpb.MigrationOptions:
    return mpb.MigrationOptions(
        bandwidth_mib_per_second=options.bandwidth_mib,
        allow_auto_converge=options.auto_converge,
        allow_post_copy=options.post_copy,
        completion_timeout_per_gib_seconds=options.completion_timeout_per_gib_s,
        progress_timeout_seconds=options.progress_timeout_s,
        max_downtime_ms=options.max_downtime_ms,
        parallel_connections=options.parallel_connections,
        on_timeout=(
            mpb.MIGRATION_TIMEOUT_ACTION_POST_COPY
            if options.on_timeout == POST_COPY
            else mpb.MIGRATION_TIMEOUT_ACTION_ABORT
        ),
    )


def progress_to_proto(sample: JobSample, allowed_downtime_ms: int = 0) -> mpb.MigrationProgress:
    return mpb.MigrationProgress(
        data_total_bytes=sample.data_total,
        data_processed_bytes=sample.data_processed,
        data_remaining_bytes=sample.data_remaining,
        memory_iteration=sample.memory_iteration,
        dirty_rate_bytes_per_second=sample.dirty_rate * sample.page_size,
        memory_bandwidth_bytes_per_second=sample.memory_bps,
        elapsed_ms=sample.elapsed_ms,
        disk_total_bytes=sample.disk_total,
        disk_processed_bytes=sample.disk_processed,
        allowed_downtime_ms=allowed_downtime_ms,
    )


def migration_to_proto(record: MigrationRecord) -> mpb.Migration:
    sample = record.progress
    message = mpb.Migration(
        id=record.id,
        namespace=record.namespace,
        name=record.name,
        uid=record.uid,
        role=mpb.MIGRATION_ROLE_SOURCE if record.role == SOURCE else mpb.MIGRATION_ROLE_TARGET,
        state=_STATES.get(record.state, mpb.MIGRATION_STATE_UNSPECIFIED),
        source_node=record.source_node,
        target_node=record.target_node,
        target_agent=record.target_agent,
        options=_options_to_proto(record.options),
        progress=progress_to_proto(sample, record.allowed_downtime_ms),
        message=record.message,
        downtime_ms=record.downtime_ms,
    )
    if record.started_at:
        message.start_time.CopyFrom(timestamp(record.started_at))
    if record.ended_at:
        message.end_time.CopyFrom(timestamp(record.ended_at))
    return message


def _id(request: Any) -> str:
    if not request.migration_id:
        raise InvalidSpec("migration_id", "is required")
    return str(request.migration_id)


class MigrationApi(mgrpc.MigrationServiceServicer):
    """virtagent.v1.MigrationService over Migrations."""

    def __init__(self, migrations: Migrations, streams: CallSlots | None = None) -> None:
        self.migrations = migrations
        # Watches hold a server thread each: they count against the VM watches' limit.
        self.streams = streams or CallSlots(16, "watch streams (VMs, consoles, migrations)")
        self.calls = CallSlots(
            MIGRATION_CALLS, "migration calls (migrate/prepare/finish/cancel/update)"
        )

    @grpc_errors
    def MigrateVirtualMachine(
        self, request: mpb.MigrateVirtualMachineRequest, context: grpc.ServicerContext
    ) -> mpb.MigrateVirtualMachineResponse:
        namespace = validate_name("namespace", request.namespace)
        name = validate_name("name", request.name)
        options = options_from_proto(request.options)
        with self.calls.take():
            record = self.migrations.migrate(
                namespace, name, request.target_agent, options, request.request_id
            )
        return mpb.MigrateVirtualMachineResponse(migration=migration_to_proto(record))

    @grpc_errors
    def GetMigration(
        self, request: mpb.GetMigrationRequest, context: grpc.ServicerContext
    ) -> mpb.GetMigrationResponse:
        record = self.migrations.get(_id(request))
        return mpb.GetMigrationResponse(migration=migration_to_proto(record))

    @grpc_errors
    def ListMigrations(
        self, request: mpb.ListMigrationsRequest, context: grpc.ServicerContext
    ) -> mpb.ListMigrationsResponse:
        records = self.migrations.list(request.namespace, request.name)
        return mpb.ListMigrationsResponse(migrations=[migration_to_proto(r) for r in records])

    @grpc_stream_errors
    def WatchMigration(
        self, request: mpb.WatchMigrationRequest, context: grpc.ServicerContext
    ) -> Iterator[mpb.WatchMigrationResponse]:
        records = self.migrations.watch(_id(request), alive=context.is_active)
        with self.streams.take():
            for record in records:
                yield mpb.WatchMigrationResponse(migration=migration_to_proto(record))

    @grpc_errors
    def CancelMigration(
        self, request: mpb.CancelMigrationRequest, context: grpc.ServicerContext
    ) -> mpb.CancelMigrationResponse:
        migration_id = _id(request)
        with self.calls.take():
            record = self.migrations.cancel(migration_id)
        return mpb.CancelMigrationResponse(migration=migration_to_proto(record))

    @grpc_errors
    def UpdateMigration(
        self, request: mpb.UpdateMigrationRequest, context: grpc.ServicerContext
    ) -> mpb.UpdateMigrationResponse:
        bandwidth = (
            request.bandwidth_mib_per_second
            if request.HasField("bandwidth_mib_per_second")
            else None
        )
        downtime = request.max_downtime_ms if request.HasField("max_downtime_ms") else None
        migration_id = _id(request)
        with self.calls.take():
            record = self.migrations.update(
                migration_id, bandwidth_mib=bandwidth, max_downtime_ms=downtime
            )
        return mpb.UpdateMigrationResponse(migration=migration_to_proto(record))

    @grpc_errors
    def PrepareMigrationTarget(
        self, request: mpb.PrepareMigrationTargetRequest, context: grpc.ServicerContext
    ) -> mpb.PrepareMigrationTargetResponse:
        migration_id = _id(request)
        with self.calls.take():
            answer = self.migrations.prepare(
                migration_id,
                request.metadata_xml,
                request.source_node,
                request.memory_bytes,
                vm=(request.namespace, request.name),
                validate_only=request.validate_only,
                post_copy=request.post_copy,
                digests=dict(request.container_disk_digests),
            )
        return mpb.PrepareMigrationTargetResponse(
            libvirt_uri=answer.libvirt_uri,
            migration_uri=answer.migration_uri,
            node_name=answer.node_name,
            domain_xml=answer.domain_xml,
        )

    @grpc_errors
    def FinishMigrationTarget(
        self, request: mpb.FinishMigrationTargetRequest, context: grpc.ServicerContext
    ) -> mpb.FinishMigrationTargetResponse:
        migration_id = _id(request)
        with self.calls.take():
            downtime, final = self.migrations.finish(
                migration_id, succeeded=request.succeeded, message=request.message
            )
        return mpb.FinishMigrationTargetResponse(
            downtime_ms=downtime, progress=progress_to_proto(final)
        )
